//! The NATS bus of psrpc, wire-compatible with Go psrpc (see the
//! project's docs/PROTOCOL.md, "NATS specifics").
//!
//! ```no_run
//! # async fn demo() -> psrpc::Result<()> {
//! use std::sync::Arc;
//! use psrpc::{ClientOptions, RpcClient, RpcServer, ServerOptions};
//! use psrpc_nats::NatsBus;
//!
//! let bus = NatsBus::connect("nats://127.0.0.1:4222").await?;
//! let server = RpcServer::new(Arc::new(bus.clone()), "MyService", ServerOptions::default()).await?;
//! let client = RpcClient::new(Arc::new(bus), "MyService", ClientOptions::default()).await?;
//! # let _ = (server, client);
//! # Ok(())
//! # }
//! ```
//!
//! # Layers
//!
//! [`NatsBus`] is psrpc's generic [`Bus`](psrpc::bus::Bus) over a
//! [`NatsTransport`] ([`psrpc::bus::Transport`]). The generic bus keeps the
//! subscribers of each channel and hands messages to them (fan-out, a queue
//! message to one member in turn, the slow-consumer policy), counts drops,
//! enforces the size limit and carries the compression options; the
//! transport does what is particular to NATS: the connection, subjects and
//! their limits, the routers below, the queue hand-back, the subscription
//! barrier and the presence probe.
//!
//! # Wire
//!
//! * A message on channel `c` is published to the subject `c.server` (with
//!   the optional [prefix](NatsBusBuilder::prefix) in front), without headers
//!   or reply subject. Its payload is the `Msg` envelope the runtime hands
//!   over with `Msg.channel` (field 3) set to `c.local` when that is not empty
//!   ([`psrpc::protocol::wire::append_channel`]): exactly the bytes Go psrpc publishes.
//! * A subscription whose `c.local` is empty subscribes the subject directly:
//!   `SUB <subject>` for fan-out, `SUB <subject> bus` (queue group `bus`) for
//!   queue subscriptions.
//! * A subscription whose `c.local` is non-empty goes through a *router*:
//!   one NATS subscription per (subject, queue-or-not) per bus instance
//!   (clones share them), shared by every channel of that subject with
//!   subscribers in the bus. Each message is handed by its field 3 to the
//!   channel of exactly that name (the one place the transport reads a
//!   payload). The NATS subscription is removed when the last channel of
//!   the router has no subscriber left.
//!
//! # Compression
//!
//! Every client and server reads gzip-compressed messages (Go psrpc v0.7.6
//! and later can send them) whatever the options; payloads that inflate
//! past a cap (64 MiB by default) are dropped and counted. Publishing
//! compressed is off by default; turn it on per bus, when building it:
//!
//! ```no_run
//! # async fn run() -> psrpc::Result<()> {
//! use psrpc::CompressionOptions;
//! let bus = psrpc_nats::NatsBus::builder()
//!     .compression(CompressionOptions::default().with_quality(6))
//!     .connect("nats://127.0.0.1:4222")
//!     .await?;
//! # let _ = bus; Ok(())
//! # }
//! ```
//!
//! Payloads of at least 1024 bytes ([`with_threshold`](psrpc::CompressionOptions::with_threshold))
//! are then gzipped, and sent compressed when that makes them smaller. Only
//! the payload is compressed: `Msg.channel`, which routes messages here,
//! stays readable. In a mixed fleet, roll out readers first: Go peers older
//! than v0.7.6 drop compressed messages (every peer built on this crate
//! reads them), so raise the quality at publishers only once every peer on
//! the bus is v0.7.6 or later. The rules are in [`psrpc::codec`].
//!
//! # Deliberate choices
//!
//! * **No route**: NATS picks one process of queue group `bus`
//!   among *all* queue subscribers of a subject such as `SRV.<S>.Q`,
//!   whatever methods they serve. Go drops a queue message that reaches a
//!   process with no local subscriber of its name, so the caller gets
//!   `unavailable`. This bus instead *hands it back*: it republishes the
//!   same bytes on the same subject (logged at debug level), so NATS picks a
//!   member again. Each bus hands a message back at most once (it remembers
//!   the messages it handed back for 5 s), so a message is never
//!   republished more times in total than its group has members, and only
//!   a psrpc request is handed back (someone waits for its answer): junk,
//!   and queue-subscription messages of a kind no member takes, are dropped
//!   and counted at once. A message can still be lost when it reaches a bus
//!   that has handed it back already; the caller then sees `unavailable`,
//!   as with Go. The message format is untouched and Go peers handle a
//!   republished message as any other; the only difference on the wire is
//!   the extra `PUB` in this failure case. `queue_hand_back(false)` is
//!   Go's drop ([`NatsBusBuilder::queue_hand_back`]). Fan-out routers drop
//!   unrouted messages (trace level): every subscriber of the subject gets
//!   them anyway.
//! * **Several local queue subscribers of one name** in one bus instance:
//!   each message goes to one of them, in turn (Go gives it to each). This
//!   keeps the [`MessageBus`](psrpc::MessageBus) contract: one queue member in the whole system
//!   gets each message.
//! * Go refuses to open a queue and a fan-out router on one subject in one
//!   bus instance ("subscription type mismatch"); this bus keeps them apart
//!   and allows it.
//! * **Subscriptions are in effect when `subscribe` returns**: after the
//!   `SUB`, the bus publishes a sequence number to a private inbox of its
//!   connection (`_INBOX.<id>`, subscribed once per bus) and waits for it to
//!   come back; the server handles one connection's operations in order, so
//!   by then it has the `SUB`, and a message published afterwards by any
//!   connection to the same server is delivered (Go subscribes without
//!   waiting, so its tests sleep). The wait is bounded by 5 s (then an
//!   `unavailable` error). On the wire this adds one small `PUB` to that
//!   inbox per subscription. In a cluster, other nodes learn of the
//!   subscription over their routes a moment later (route propagation, well
//!   under a millisecond on loopback).
//! * **Closing a queue subscription** unsubscribes and hands the messages
//!   async-nats had already received for it back to the group (the same
//!   republish as for "no route"), instead of dropping them. Messages the
//!   server routed to it in the last round trip before the `UNSUB` arrived
//!   are lost, as with any NATS client.
//! * **Runtime handlers** ([`MessageBus::subscribe_handler`](psrpc::MessageBus::subscribe_handler)) keep the
//!   trait's default (a task reading a [`RawSubscription`](psrpc::bus::RawSubscription)): calling them from
//!   the task that reads the NATS subscription saves a task hop and a little
//!   sequential latency, but measured about 30% fewer calls per second at
//!   64 in flight on two cores (the reader becomes the serial bottleneck).
//! * **Slow consumers**: the task reading a NATS subscription never waits
//!   for a subscriber, so a stuck subscriber loses its own messages and
//!   nothing else (the policy of every psrpc bus, [`psrpc::bus::Sink`]):
//!   each subscription buffers up to the `size` it was made with and, while
//!   it is behind but still reading, up to
//!   [`psrpc::bus::READER_PENDING_LIMIT`] messages in all, so a burst costs
//!   a subscriber that keeps reading nothing; one that reads nothing for
//!   [`psrpc::bus::READER_STUCK_AFTER`] while behind is stuck, and what does
//!   not fit its own buffer is dropped for it at once until it reads again.
//!   Below that, async-nats buffers up to 65 536 messages per NATS
//!   subscription (its `subscription_capacity`), which the bus's reader
//!   drains without waiting; should that buffer still overflow (a starved
//!   process), async-nats drops and reports it through its event callback,
//!   which [`NatsBus::connect`] and the connecting methods of
//!   [`NatsBusBuilder`] install to count those drops too (reason `broker`;
//!   this replaces an event callback set in the options given; a bus made
//!   by [`NatsBusBuilder::from_client`] cannot count them). Every drop is counted in
//!   [`MessageBus::drops`](psrpc::MessageBus::drops) and logged at warn level at most once per
//!   interval with its subject ([`psrpc::drops`]).
//! * **Malformed bytes** on a routed subject (field 3 unreadable) are dropped
//!   and counted. Direct subscriptions pass bytes on as they are; the
//!   runtime rejects bad envelopes.
//!
//! # Security
//!
//! Every connection that may publish and subscribe on a service's subjects
//! is a full psrpc peer: it can serve the service (subscribe
//! `SRV.<service>...`), read its calls, and answer any client's call (a
//! forged response on `CLI.<service>.<client id>.RES` is taken as the
//! answer). Lock a shared nats-server down with per-user subject
//! permissions. A client user of service `Greeter` that may call it but not
//! serve it:
//!
//! ```text
//! { user: greeter-client, password: secret, permissions: {
//!     publish:   { allow: ["SRV.Greeter", "SRV.Greeter.>", "PSRPC_LIVE.Greeter.*.SRV", "_INBOX.>"] }
//!     subscribe: { allow: ["CLI.Greeter.*.RES", "CLI.Greeter.*.CLAIM", "CLI.Greeter.*.STR",
//!                          "PSRPC_LIVE.Greeter.*.CLI", "_INBOX.>"] } } }
//! ```
//!
//! The server user is the mirror image (and may publish on
//! `SRV.Greeter.>` to hand queue requests back). The tested file is the
//! repository's `docs/security/nats-server.conf` (with the table of
//! subjects); `tests/security.rs` checks that the client user calls the
//! service and that nats-server refuses its subscription to
//! `SRV.Greeter.Q` and its publish on `CLI.Greeter.CLI_other.RES`. The
//! server refuses a subscription asynchronously (a permission violation
//! on the connection), so a server registered under a user without the
//! right hears nothing instead of failing.
//! A [prefix](NatsBusBuilder::prefix) separates deployments that trust
//! each other; it is no protection.
//!
//! # Dead stream peers
//!
//! Core NATS cannot tell who subscribes a subject without publishing to
//! it (the server's subscription lists are for the system account only),
//! so [`MessageBus::listeners`](psrpc::MessageBus::listeners) answers only for the presence subjects of
//! psrpc streams (`PSRPC_LIVE.<service>.<stream id>.CLI|SRV`, subscribed
//! by the Rust ends of a stream and by nothing else) and `None` for every
//! other subject: it sends a request with an empty payload there, and
//! "no responders" means nobody listens (this needs headers, the default
//! since nats-server 2.2). Nothing is ever sent to a psrpc subject, so Go
//! peers hear nothing new; a Go peer's death is not noticed on this bus.
//! A user that runs psrpc streams needs publish and subscribe permission
//! on `PSRPC_LIVE.>` and subscribe permission on its inbox (`_INBOX.>`)
//! for the "no responders" answer. See `psrpc::stream`, "Dead peers".
//!
//! # Outages and topologies
//!
//! Reconnection is left to async-nats: it reconnects for ever (backing off
//! up to 4 s between attempts), replays every subscription (queue groups
//! included) and buffers publishes made meanwhile; a publish waits at most
//! 1 s for room in that buffer (or in the bus's own queue of publishes
//! made close together, which waits for it), then fails with
//! `unavailable`. Core NATS is
//! at-most-once: messages published while a connection is down are lost, so
//! calls in flight during an outage fail by their deadline (`unavailable` or
//! `deadline_exceeded`); new calls work again once the server is back
//! (tested: within 2 s of a restart), without rebuilding clients or servers.
//! Construction itself fails fast: [`NatsBus::connect`] returns an
//! [`Error::Connect`] (`unavailable`) when the server is unreachable or
//! refuses the credentials.
//!
//! While the connection is down, [`NatsBus::is_connected`] is false and
//! `publish` fails at once with `unavailable` ("nats: bus disconnected"), so
//! a call made during an outage says so instead of waiting for an answer
//! that cannot come. Losing and regaining the connection is logged at warn
//! level; [`NatsBus::watch_connected`] follows the state and
//! [`NatsBus::reconnects`] counts the reconnections.
//!
//! Tested topologies: one server, and a 3-node cluster (routes) on loopback
//! with the clients and servers of each test on different nodes (the whole
//! conformance suite). Several server URLs, comma-separated
//! (`nats://a:4222,nats://b:4222`) or as a list
//! ([`NatsBusBuilder::connect_urls`]), let async-nats fail over between
//! nodes (tested: the node a server and a client were on is killed, calls
//! go on through the other).
//!
//! # Credentials
//!
//! A user and password (`nats://user:password@host:4222`, percent-encoded
//! where needed) or a token (`nats://token@host:4222`) in a URL are read by
//! async-nats' URL parser and handed to its
//! [`ConnectOptions`](async_nats::ConnectOptions) (async-nats itself does
//! not send a URL's credentials); errors never repeat them (tested with a
//! nats-server that requires a user and password, and one that requires a
//! token). TLS, nkeys and credentials files go through
//! [`NatsBusBuilder::connect_with_options`] or
//! [`NatsBusBuilder::from_client`] (not tested here).
//!
//! # Closing
//!
//! [`NatsBus::close`] ends the bus for good (every clone with it): it
//! unsubscribes everything the bus subscribed, stops its tasks, writes out
//! what was published before, and closes a connection the bus made. Later
//! publishes and subscriptions fail with `unavailable` ("bus closed").
//! Dropping the last handle of a bus instead leaves it to async-nats, after
//! a flush; a subscription keeps the bus alive until it is dropped, and
//! then unsubscribes.
//!
//! # Limits
//!
//! * **Subject length.** nats-server closes a connection that sends a
//!   protocol line longer than its `max_control_line` (4096 bytes by
//!   default), and async-nats then reconnects and sends the same line again.
//!   Subjects contain topics and client ids, and sanitising turns every
//!   character outside `[0-9A-Za-z_]` into 6 or 10 bytes, so a few hundred
//!   characters of a room name are enough. Every subject is therefore
//!   checked before it reaches the connection
//!   ([`MessageBus::check_channel`](psrpc::MessageBus::check_channel)): at most [`DEFAULT_MAX_SUBJECT_LEN`]
//!   bytes (the control line less room for the rest of a `PUB` or `SUB`
//!   line, see [`NatsBusBuilder::max_control_line`]), no empty token, no
//!   wildcard token, no whitespace. A call or registration on a subject
//!   that fails the check fails at once with `invalid_argument`; a server
//!   drops a request it could only answer on such a subject (a crafted
//!   client id), counting it as `InvalidChannel` ([`psrpc::drops::DropReason`]).
//! * **Message size.** A message larger than the server's `max_payload`
//!   (from its `INFO`, 1 MiB by default; [`NatsBus::max_message_size`]) is
//!   refused before it is sent, with `resource_exhausted`, which the
//!   default retry policy does not retry. The server never delivers larger
//!   messages; when [`NatsBusBuilder::max_message_size`] sets a smaller
//!   maximum, larger messages that arrive are dropped and counted
//!   (`TooLarge`).
//!
//! # Errors
//!
//! The bus's own operations fail with [`Error`], which keeps the async-nats
//! error behind it as its source; the [`psrpc::MessageBus`] methods turn it
//! into a [`psrpc::Error`] of code [`Error::code`] whose source is the
//! [`Error`], so the whole chain is there for `std::error::Error::source`.

mod barrier;
mod builder;
mod bus;
mod conn;
mod error;
mod handback;
mod publish;
mod router;
mod slot;
mod subject;
mod subscribe;
mod transport;

pub use async_nats;
pub use builder::{NatsBusBuilder, servers_and_options};
pub use bus::{NatsBus, QUEUE_GROUP};
pub use error::{BarrierError, Error};
pub use subject::{DEFAULT_MAX_CONTROL_LINE, DEFAULT_MAX_SUBJECT_LEN};
pub use transport::NatsTransport;

/// Locks `m`, going on after a panic of another holder.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
