//! Everything the tool does through the psrpc runtime and bus crates, in
//! one place: connecting, calls on raw bytes, streams, subscriptions and
//! publishes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use psrpc::bus::DynBus;
use psrpc::protocol::channels;
use psrpc::protocol::wire::{self, Response};
use psrpc::{
    CallOptions, ClientOptions, ClientStream, MessageBus, Method, Routing, RpcClient,
    SelectionOptions,
};

/// A method as the tool calls it: built from the schema at run time, on raw
/// messages.
pub type DynMethod = Method<RawMsg, RawMsg>;

use crate::error::{CliError, CliResult};

/// A message carried as its encoded bytes, unchanged both ways: the tool
/// encodes and decodes with descriptors, the runtime moves bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawMsg(pub Bytes);

impl prost::Message for RawMsg {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // `decode` goes through `merge` below, which keeps the bytes
        // whole; the runtime never decodes this type length-delimited.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }

    fn merge(&mut self, mut buf: impl Buf) -> Result<(), prost::DecodeError> {
        let mut out = self.0.to_vec();
        while buf.has_remaining() {
            let c = buf.chunk();
            out.extend_from_slice(c);
            let n = c.len();
            buf.advance(n);
        }
        self.0 = Bytes::from(out);
        Ok(())
    }
}

/// Connects to the bus at `url` (`redis://`, `rediss://`, `nats://`),
/// with every channel under `prefix`; fails after `timeout`.
pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> CliResult<DynBus> {
    let fut = async {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            psrpc_redis::RedisBus::builder()
                .prefix(prefix)
                .connect(url)
                .await
                .map(|b| std::sync::Arc::new(b) as DynBus)
                .map_err(psrpc::Error::from)
        } else if url.starts_with("nats://") || url.starts_with("tls://") {
            psrpc_nats::NatsBus::builder()
                .prefix(prefix)
                .connect(url)
                .await
                .map(|b| std::sync::Arc::new(b) as DynBus)
                .map_err(psrpc::Error::from)
        } else {
            Err(psrpc::Error::new(
                psrpc::ErrorCode::InvalidArgument,
                "the bus URL must start with redis://, rediss:// or nats://",
            ))
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if e.code() == psrpc::ErrorCode::InvalidArgument => Err(CliError::input(
            format!("--bus {:?}: {}", shown_url(url), e.message()),
        )),
        Ok(Err(e)) => Err(CliError::bus(format!(
            "cannot connect to {}: {}",
            shown_url(url),
            e.message()
        ))),
        Err(_) => Err(CliError::bus(format!(
            "cannot connect to {}: no answer within {timeout:?}",
            shown_url(url)
        ))),
    }
}

/// `url` as the tool prints it: the password of `user:password@` (or a
/// lone token, `token@`) replaced by `***`, in each of several
/// comma-separated URLs, with a scheme or without, so that no message
/// shows a secret. Everything before the last `@` of a URL counts as its
/// credentials (a password may hold `/`, `?`, `#` or `@`).
pub fn shown_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let start = one.find("://").map_or(0, |i| i + 3);
            let rest = &one[start..];
            let Some(at) = rest.rfind('@') else {
                return one.to_owned();
            };
            let user = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{}{user}{}", &one[..start], &rest[at..])
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A psrpc error of a call as the tool reports it.
pub fn call_error(e: &psrpc::Error, pool: Option<&prost_reflect::DescriptorPool>) -> CliError {
    let details = e
        .details()
        .iter()
        .map(|a| crate::json::any(pool, a))
        .collect();
    CliError::call(e.code().as_str(), e.message(), details)
}

/// How to make one call.
#[derive(Debug, Clone, Default)]
pub struct CallSettings {
    /// The request timeout.
    pub timeout: Option<Duration>,
    /// Metadata sent with the request.
    pub metadata: BTreeMap<String, String>,
    /// The client id (a fresh `CLI_` id when `None`).
    pub client_id: Option<String>,
    /// Claims below it are ignored (affinity methods).
    pub min_affinity: Option<f32>,
    /// A claim at or above it is taken at once (affinity methods).
    pub max_affinity: Option<f32>,
}

/// One answer of a call: the server, the outcome, when it came.
#[derive(Debug)]
pub struct Answer {
    /// The request id.
    pub request_id: String,
    /// The answering server, when known.
    pub server_id: String,
    /// The response bytes, or the error.
    pub result: Result<Bytes, psrpc::Error>,
    /// Time from the send to this answer.
    pub elapsed: Duration,
}

/// A client of one service, with a tap on its response channel that tells
/// which server answered each request.
pub struct Caller {
    client: RpcClient,
    tap: psrpc::bus::RawSubscription,
}

impl Caller {
    /// A client of `service` on `bus`.
    pub async fn new(bus: DynBus, service: &str, client_id: Option<String>) -> CliResult<Caller> {
        let mut opts = ClientOptions::default();
        if let Some(id) = client_id {
            opts = opts.client_id(id);
        }
        let client = RpcClient::new(bus.clone(), service, opts)
            .await
            .map_err(|e| {
                CliError::bus(format!("subscribing the client channels: {}", e.message()))
            })?;
        let tap = bus
            .subscribe(&channels::response_channel(service, client.id()), 1024)
            .await
            .map_err(|e| {
                CliError::bus(format!("subscribing the response channel: {}", e.message()))
            })?;
        Ok(Caller { client, tap })
    }

    fn options(&self, method: &DynMethod, s: &CallSettings) -> CallOptions {
        let mut o = CallOptions {
            timeout: s.timeout,
            metadata: s.metadata.clone(),
            ..Default::default()
        };
        if s.min_affinity.is_some() || s.max_affinity.is_some() {
            let mut sel = if method.routing() == Routing::Affinity {
                SelectionOptions::affinity_defaults(psrpc::select::DEFAULT_SELECTION_TIMEOUT)
            } else {
                SelectionOptions::queue_defaults(psrpc::select::DEFAULT_SELECTION_TIMEOUT)
            };
            if let Some(m) = s.min_affinity {
                sel.minimum_affinity = m;
            }
            if let Some(m) = s.max_affinity {
                sel.maximum_affinity = m;
            }
            o.selection = Some(sel);
        }
        o
    }

    /// The next response seen on the tap within `wait`.
    async fn tapped(&mut self, wait: Duration) -> Option<Response> {
        let deadline = Instant::now() + wait;
        loop {
            let b = tokio::time::timeout_at(deadline.into(), self.tap.recv())
                .await
                .ok()??;
            if let Ok(r) = psrpc::codec::decode_envelope::<Response>(b) {
                return Some(r);
            }
        }
    }

    /// A unary call: one answer.
    pub async fn unary(
        &mut self,
        method: &DynMethod,
        topic: &[String],
        req: Bytes,
        s: &CallSettings,
    ) -> Answer {
        let opts = self.options(method, s);
        let start = Instant::now();
        let result = self.client.unary_raw(method, topic, req, &opts).await;
        let elapsed = start.elapsed();
        let (request_id, server_id) = match self.tapped(Duration::from_millis(200)).await {
            Some(r) => (r.request_id, r.server_id),
            None => (String::new(), String::new()),
        };
        Answer {
            request_id,
            server_id,
            result,
            elapsed,
        }
    }

    /// A multi call: `on_answer` gets each server's answer until the
    /// timeout ends the call.
    pub async fn multi(
        &mut self,
        method: &DynMethod,
        topic: &[String],
        req: Bytes,
        s: &CallSettings,
        mut on_answer: impl FnMut(Answer),
    ) -> Result<usize, psrpc::Error> {
        let opts = self.options(method, s);
        let start = Instant::now();
        let mut stream = self.client.multi_raw(method, topic, req, &opts).await?;
        let mut n = 0;
        while let Some(result) = stream.next().await {
            let elapsed = start.elapsed();
            let (request_id, server_id) = match self.tapped(Duration::from_secs(1)).await {
                Some(r) => (r.request_id, r.server_id),
                None => (String::new(), String::new()),
            };
            n += 1;
            on_answer(Answer {
                request_id,
                server_id,
                result,
                elapsed,
            });
        }
        Ok(n)
    }

    /// Opens a stream.
    pub async fn stream(
        &self,
        method: &DynMethod,
        topic: Vec<String>,
        s: &CallSettings,
    ) -> Result<ClientStream<RawMsg, RawMsg>, psrpc::Error> {
        let opts = self.options(method, s);
        self.client.stream(method, topic).options(opts).await
    }

    /// Closes the client.
    pub fn close(&self) {
        self.client.close();
    }
}

/// A received subscription update: its type URL and bytes.
#[derive(Debug)]
pub struct Update {
    /// The type URL of the payload.
    pub type_url: String,
    /// The user message bytes.
    pub value: Bytes,
}

/// A subscription to the updates of `method` on `topic`: fan-out unless
/// `queue` (then it joins the queue and takes updates from other members).
pub async fn subscribe(
    bus: &DynBus,
    service: &str,
    method: &DynMethod,
    topic: &[String],
    queue: bool,
) -> CliResult<psrpc::bus::RawSubscription> {
    let ch = channels::rpc_channel(
        service,
        method.name(),
        topic,
        method.routing() == Routing::Queue,
    );
    let r = if queue {
        bus.subscribe_queue(&ch, 1024).await
    } else {
        bus.subscribe(&ch, 1024).await
    };
    r.map_err(|e| CliError::bus(format!("subscribing {}: {}", ch.legacy, e.message())))
}

/// Decodes an update received on a subscription.
pub fn update(bytes: Bytes) -> Result<Update, String> {
    let m = wire::decode_msg(bytes).map_err(|e| e.to_string())?;
    Ok(Update {
        type_url: m.type_url,
        value: m.value,
    })
}

/// Publishes `value` (a `type_name` message) as an update of `method` on `topic`.
pub async fn publish(
    bus: &DynBus,
    service: &str,
    method: &DynMethod,
    topic: &[String],
    type_name: &str,
    value: &[u8],
) -> CliResult<()> {
    let ch = channels::rpc_channel(
        service,
        method.name(),
        topic,
        method.routing() == Routing::Queue,
    );
    let msg = wire::encode_msg_raw(&format!("{}{type_name}", wire::TYPE_URL_PREFIX), value);
    bus.publish(&ch, msg)
        .await
        .map_err(|e| CliError::bus(format!("publishing on {}: {}", ch.legacy, e.message())))
}

/// Asks every server on the bus to describe itself (`PsrpcDiscovery.Describe`)
/// and gathers the answers that come within `wait`.
pub async fn describe_all(
    bus: &DynBus,
    wait: Duration,
) -> CliResult<Vec<psrpc::discovery::ServerDescription>> {
    use prost::Message as _;
    let client = RpcClient::new(
        bus.clone(),
        psrpc::discovery::SERVICE,
        ClientOptions::default(),
    )
    .await
    .map_err(|e| CliError::bus(format!("subscribing the client channels: {}", e.message())))?;
    let opts = CallOptions {
        timeout: Some(wait),
        ..Default::default()
    };
    let mut answers = client
        .multi_raw(&psrpc::discovery::DESCRIBE, (), Bytes::new(), &opts)
        .await
        .map_err(|e| CliError::bus(format!("asking for descriptions: {}", e.message())))?;
    let mut out = Vec::new();
    while let Some(a) = answers.next().await {
        if let Ok(b) = a {
            match psrpc::discovery::ServerDescription::decode(b) {
                Ok(d) => out.push(d),
                Err(e) => eprintln!("warning: an undecodable server description: {e}"),
            }
        }
    }
    client.close();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::shown_url;

    #[test]
    fn secrets_are_not_shown() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
            ("rediss://alice:s3cret@h:6380", "rediss://alice:***@h:6380"),
            ("nats://tok3n@h:4222", "nats://***@h:4222"),
            (
                "nats://a:p@h1:4222,nats://h2:4222",
                "nats://a:***@h1:4222,nats://h2:4222",
            ),
            ("redis://u:p@ss@h:1", "redis://u:***@h:1"),
            ("redis://u:a/b?c#d@h:1", "redis://u:***@h:1"),
            (
                "nats://a:p@h1,b:s3cret@h2:4222",
                "nats://a:***@h1,b:***@h2:4222",
            ),
            ("t0ken@h:4222", "***@h:4222"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }
}
