//! `psrpc watch`: a live tap of all psrpc traffic (Redis `PSUBSCRIBE`,
//! NATS `>`), every envelope decoded. It only ever subscribes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use prost::Message as _;
use psrpc::protocol::wire::{
    ClaimRequest, ClaimResponse, Msg, Request, Response, Stream, StreamBody, TYPE_URL_PREFIX,
};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::Global;
use crate::error::{CliError, CliResult};
use crate::json;
use crate::schema::Schema;

/// Arguments of `psrpc watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only traffic of this service (wire name).
    #[arg(long)]
    pub service: Option<String>,
    /// Only traffic of this method (wire name; responses and claims are
    /// matched to the request they answer).
    #[arg(long)]
    pub method: Option<String>,
    /// Only error responses and streams closed with an error.
    #[arg(long)]
    pub errors_only: bool,
    /// Instead of every message: calls per method, error rates and
    /// request-to-response latency, refreshed every second.
    #[arg(long)]
    pub summary: bool,
    /// Exit after this many messages printed.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this long (e.g. 30s).
    #[arg(long = "for", value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
}

/// One message taken off the bus.
struct Tapped {
    at: SystemTime,
    seen: Instant,
    channel: String,
    payload: Bytes,
}

/// What the tap saw, could not decode, or could not keep up with.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages taken off the bus.
    pub seen: AtomicU64,
    /// Dropped because the decoder fell behind.
    pub lagged: AtomicU64,
    /// Not a psrpc envelope.
    pub undecoded: AtomicU64,
}

const QUEUE: usize = 65536;

/// Starts the tap on `url`; messages arrive on the returned receiver.
async fn tap(
    url: &str,
    prefix: &str,
    timeout: Duration,
    counters: Arc<Counters>,
) -> CliResult<mpsc::Receiver<Tapped>> {
    let (tx, rx) = mpsc::channel::<Tapped>(QUEUE);
    let push = move |channel: String, payload: Bytes| {
        counters.seen.fetch_add(1, Ordering::Relaxed);
        let t = Tapped {
            at: SystemTime::now(),
            seen: Instant::now(),
            channel,
            payload,
        };
        if tx.try_send(t).is_err() {
            counters.lagged.fetch_add(1, Ordering::Relaxed);
        }
    };
    let fail = |e: String| {
        let url = crate::rt::shown_url(url);
        CliError::bus(format!("cannot connect to {url}: {e}"))
    };
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        let client =
            redis::Client::open(url).map_err(|e| CliError::input(format!("--bus: {e}")))?;
        let mut ps = tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| fail(format!("no answer within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        ps.psubscribe(format!("{}*", redis_glob_escape(prefix)))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                push(
                    m.get_channel_name().to_owned(),
                    Bytes::copy_from_slice(m.get_payload_bytes()),
                );
            }
        });
    } else if url.starts_with("nats://") || url.starts_with("tls://") {
        let (servers, options) =
            psrpc_nats::servers_and_options(url, async_nats::ConnectOptions::new())
                .map_err(|e| CliError::input(format!("--bus: {e}")))?;
        let client = tokio::time::timeout(timeout, options.connect(servers))
            .await
            .map_err(|_| fail(format!("no answer within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let subject = if prefix.is_empty() {
            ">".to_owned()
        } else {
            format!("{}.>", prefix.trim_end_matches('.'))
        };
        let mut sub = client
            .subscribe(subject)
            .await
            .map_err(|e| fail(e.to_string()))?;
        client.flush().await.map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                // Inboxes carry the NATS clients' own request/replies
                // (barriers), never psrpc traffic.
                if m.subject.starts_with("_INBOX.") || m.subject.starts_with('$') {
                    continue;
                }
                push(m.subject.to_string(), m.payload);
            }
        });
    } else {
        return Err(CliError::input(
            "the bus URL must start with redis://, rediss:// or nats://",
        ));
    }
    Ok(rx)
}

fn redis_glob_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// Undoes the channel-name sanitizing (`u+002d` -> `-`).
fn unsanitize(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let take = |n: usize| -> Option<char> {
            let h = s.get(i + 2..i + 2 + n)?;
            char::from_u32(u32::from_str_radix(h, 16).ok()?)
        };
        if b[i] == b'u' && b.get(i + 1) == Some(&b'+') {
            if let Some(c) = take(4) {
                out.push(c);
                i += 6;
                continue;
            }
        }
        if b[i] == b'U' && b.get(i + 1) == Some(&b'+') {
            if let Some(c) = take(8) {
                out.push(c);
                i += 10;
                continue;
            }
        }
        let c = s[i..].chars().next().unwrap_or('?');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// What a channel name says: service, method or client, topic, suffix.
#[derive(Debug, Default, Clone)]
struct Route {
    service: String,
    method: String,
    client: String,
    topic: Vec<String>,
    /// REQ, RCLAIM, STR, RES, CLAIM.
    suffix: String,
}

fn route(channel: &str, local: &str, prefix: &str, schema: &Schema) -> Route {
    let ch = channel.strip_prefix(prefix).unwrap_or(channel);
    let mut r = Route::default();
    if let Some(rest) = ch.strip_prefix("SRV.") {
        // NATS server subject: SRV.<S>[.topic...][.Q]; the envelope names the method.
        let mut parts: Vec<&str> = rest.split('.').collect();
        if parts.last() == Some(&"Q") {
            parts.pop();
        }
        r.service = parts.first().map(|s| s.to_string()).unwrap_or_default();
        r.topic = parts.iter().skip(1).map(|p| unsanitize(p)).collect();
        if let Some((m, suffix)) = local.rsplit_once('.') {
            r.method = m.to_owned();
            r.suffix = suffix.to_owned();
        }
    } else if let Some(rest) = ch.strip_prefix("CLI.") {
        // NATS client subject: CLI.<S>.<C>.<RES|CLAIM|STR>
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() >= 3 {
            r.service = parts[0].to_owned();
            r.client = parts[1..parts.len() - 1].join(".");
            r.suffix = parts[parts.len() - 1].to_owned();
        }
    } else {
        // Redis: S|M|topic...|REQ, S|C|RES, ...
        let parts: Vec<&str> = ch.split('|').collect();
        if parts.len() >= 3 {
            r.service = parts[0].to_owned();
            r.suffix = parts[parts.len() - 1].to_owned();
            let second = unsanitize(parts[1]);
            let client_side = match r.suffix.as_str() {
                "RES" | "CLAIM" => true,
                "STR" => {
                    parts.len() == 3
                        && (second.starts_with("CLI_")
                            || schema.by_wire(&r.service, &second).is_none())
                }
                _ => false,
            };
            if client_side {
                r.client = second;
            } else {
                r.method = second;
                r.topic = parts[2..parts.len() - 1]
                    .iter()
                    .map(|p| unsanitize(p))
                    .collect();
            }
        }
    }
    r
}

/// What the decoder remembers across messages, bounded.
#[derive(Default)]
struct Memory {
    /// Request id -> (service, method, when the request was seen).
    requests: HashMap<String, (String, String, Instant)>,
    request_order: VecDeque<String>,
    /// Stream id -> (service, method).
    streams: HashMap<String, (String, String)>,
    stream_order: VecDeque<String>,
}

const MEMORY: usize = 100_000;

impl Memory {
    fn request(&mut self, id: &str, service: &str, method: &str, at: Instant) {
        if self.requests.len() >= MEMORY {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
            }
        }
        self.request_order.push_back(id.to_owned());
        self.requests
            .insert(id.to_owned(), (service.to_owned(), method.to_owned(), at));
    }
    fn stream(&mut self, id: &str, service: &str, method: &str) {
        if self.streams.len() >= MEMORY {
            if let Some(old) = self.stream_order.pop_front() {
                self.streams.remove(&old);
            }
        }
        self.stream_order.push_back(id.to_owned());
        self.streams
            .insert(id.to_owned(), (service.to_owned(), method.to_owned()));
    }
}

/// One decoded message.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The JSON line.
    pub line: Map<String, Value>,
    /// Service and method, when known.
    pub service: String,
    /// The method, when known.
    pub method: String,
    /// Whether it carries an error.
    pub error: bool,
    /// Request -> response latency, for the first response of a request.
    pub latency: Option<Duration>,
    /// A request (a call) was seen.
    pub call: bool,
    /// An answer was seen.
    pub answer: bool,
}

fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:06}", d.subsec_micros())
}

fn payload(
    schema: &Schema,
    service: &str,
    method: &str,
    input: bool,
    bytes: &[u8],
) -> Option<Value> {
    let m = schema.by_wire(service, method)?;
    let d = if input { m.input() } else { m.output() };
    Some(json::decode(&d, bytes))
}

/// Decodes one tapped message.
fn decode(t: &Tapped, prefix: &str, schema: &Schema, mem: &mut Memory) -> Option<Decoded> {
    let msg = Msg::decode(t.payload.clone()).ok()?;
    if msg.type_url.is_empty() {
        return None;
    }
    // Compressed payloads (Go v0.7.6+ publishers, or this port with
    // compression on) are inflated as any reader does, with its cap.
    let gz = msg.compression == 1;
    let value = psrpc::CompressionOptions::default()
        .payload(msg.clone())
        .ok()?;
    let r = route(&t.channel, &msg.channel, prefix, schema);
    let mut d = Decoded::default();
    let l = &mut d.line;
    l.insert("time".into(), format_time(t.at).into());
    l.insert("channel".into(), t.channel.clone().into());
    let mut service = r.service.clone();
    let mut method = r.method.clone();
    let type_name = msg
        .type_url
        .strip_prefix(TYPE_URL_PREFIX)
        .unwrap_or(&msg.type_url);
    let kind: String;
    let mut fields = Map::new();
    match type_name {
        "internal.Request" => {
            let q = Request::decode(value.clone()).ok()?;
            kind = "request".into();
            mem.request(&q.request_id, &service, &method, t.seen);
            d.call = true;
            fields.insert("requestId".into(), q.request_id.into());
            fields.insert("clientId".into(), q.client_id.into());
            if q.multi {
                fields.insert("multi".into(), true.into());
            }
            if !q.metadata.is_empty() {
                fields.insert("metadata".into(), json!(q.metadata));
            }
            if let Some(p) = payload(schema, &service, &method, true, &q.raw_request) {
                fields.insert("payload".into(), p);
            }
        }
        "internal.Response" => {
            let s = Response::decode(value.clone()).ok()?;
            kind = "response".into();
            if let Some((sv, m, at)) = mem.requests.get(&s.request_id) {
                service = sv.clone();
                method = m.clone();
                d.latency = Some(t.seen.saturating_duration_since(*at));
            }
            d.answer = true;
            fields.insert("requestId".into(), s.request_id.into());
            fields.insert("serverId".into(), s.server_id.into());
            if !r.client.is_empty() {
                fields.insert("clientId".into(), r.client.clone().into());
            }
            if !s.error.is_empty() {
                d.error = true;
                fields.insert("code".into(), s.code.into());
                fields.insert("error".into(), s.error.into());
                if !s.error_details.is_empty() {
                    let det: Vec<Value> = s
                        .error_details
                        .iter()
                        .map(|a| json::any(Some(schema.pool()), a))
                        .collect();
                    fields.insert("details".into(), det.into());
                }
            } else if let Some(p) = payload(schema, &service, &method, false, &s.raw_response) {
                fields.insert("payload".into(), p);
            }
        }
        "internal.ClaimRequest" => {
            let c = ClaimRequest::decode(value.clone()).ok()?;
            kind = "claim".into();
            if let Some((sv, m, _)) = mem.requests.get(&c.request_id) {
                service = sv.clone();
                method = m.clone();
            }
            fields.insert("requestId".into(), c.request_id.into());
            fields.insert("serverId".into(), c.server_id.into());
            fields.insert("clientId".into(), r.client.clone().into());
            fields.insert("affinity".into(), json!(c.affinity));
        }
        "internal.ClaimResponse" => {
            let c = ClaimResponse::decode(value.clone()).ok()?;
            kind = "claim response".into();
            fields.insert("requestId".into(), c.request_id.into());
            fields.insert("serverId".into(), c.server_id.into());
        }
        "internal.Stream" => {
            let s = Stream::decode(value.clone()).ok()?;
            let to_server = r.client.is_empty();
            if let Some((sv, m)) = mem.streams.get(&s.stream_id) {
                service = sv.clone();
                method = m.clone();
            }
            fields.insert("streamId".into(), s.stream_id.clone().into());
            fields.insert("requestId".into(), s.request_id.clone().into());
            if !r.client.is_empty() {
                fields.insert("clientId".into(), r.client.clone().into());
            }
            kind = match s.body {
                Some(StreamBody::Open(o)) => {
                    mem.stream(&s.stream_id, &service, &method);
                    // Claims of the open carry its request id.
                    mem.request(&s.request_id, &service, &method, t.seen);
                    d.call = true;
                    fields.insert("clientId".into(), o.node_id.into());
                    "stream open".into()
                }
                Some(StreamBody::Message(m)) => {
                    if let Some(p) = payload(schema, &service, &method, to_server, &m.raw_message) {
                        fields.insert("payload".into(), p);
                    }
                    "stream message".into()
                }
                Some(StreamBody::Ack(_)) => "stream ack".into(),
                Some(StreamBody::Close(c)) => {
                    if !c.error.is_empty() || !c.code.is_empty() {
                        d.error = c.code != "canceled" || c.error != "stream closed";
                        fields.insert("code".into(), c.code.into());
                        fields.insert("error".into(), c.error.into());
                    }
                    "stream close".into()
                }
                None => "stream".into(),
            };
        }
        user => {
            kind = "subscription update".into();
            fields.insert("type".into(), user.to_owned().into());
            if let Some(desc) = schema.message(user) {
                fields.insert("payload".into(), json::decode(&desc, &value));
            }
        }
    }
    l.insert("kind".into(), kind.into());
    if !service.is_empty() {
        l.insert("service".into(), service.clone().into());
    }
    if !method.is_empty() {
        l.insert("method".into(), method.clone().into());
    }
    if !r.topic.is_empty() {
        l.insert("topic".into(), json!(r.topic));
    }
    if gz {
        l.insert("compression".into(), "gzip".into());
    }
    l.extend(fields);
    d.service = service;
    d.method = method;
    Some(d)
}

/// Per-method figures of the summary.
struct Stats {
    calls: u64,
    answers: u64,
    errors: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            calls: 0,
            answers: 0,
            errors: 0,
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram bounds"),
        }
    }
}

fn print_summary(stats: &BTreeMap<String, Stats>, c: &Counters, elapsed: Duration) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{:<40} {:>8} {:>8} {:>7} {:>10} {:>10}",
        "METHOD", "CALLS", "ANSWERS", "ERR%", "P50 ms", "P99 ms"
    );
    for (k, s) in stats {
        let err = if s.answers == 0 {
            0.0
        } else {
            100.0 * s.errors as f64 / s.answers as f64
        };
        let (p50, p99) = if s.latency.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.2}", s.latency.value_at_quantile(0.5) as f64 / 1000.0),
                format!("{:.2}", s.latency.value_at_quantile(0.99) as f64 / 1000.0),
            )
        };
        let _ = writeln!(
            out,
            "{k:<40} {:>8} {:>8} {err:>6.1}% {p50:>10} {p99:>10}",
            s.calls, s.answers
        );
    }
    let _ = writeln!(out, "{}", counters_line(c, elapsed));
    let _ = out.flush();
}

fn counters_line(c: &Counters, elapsed: Duration) -> String {
    let seen = c.seen.load(Ordering::Relaxed);
    let lagged = c.lagged.load(Ordering::Relaxed);
    let undecoded = c.undecoded.load(Ordering::Relaxed);
    format!(
        "seen {seen} messages in {:.1}s; not psrpc (undecoded) {undecoded}; dropped, could not keep up {lagged}",
        elapsed.as_secs_f64()
    )
}

/// `psrpc watch`.
pub async fn run(g: &Global, a: WatchArgs) -> CliResult<u8> {
    let schema = if g.proto.is_empty() {
        Schema::default()
    } else {
        Schema::load(&g.proto, &g.import_path)?
    };
    let url = g
        .bus
        .as_deref()
        .ok_or_else(|| CliError::input("no bus: give --bus URL or set PSRPC_BUS"))?;
    let counters = Arc::new(Counters::default());
    let mut rx = tap(url, &g.prefix, g.connect_timeout, counters.clone()).await?;
    if g.verbose {
        eprintln!("watching {}", crate::rt::shown_url(url));
    }
    let start = Instant::now();
    let mut mem = Memory::default();
    let mut stats: BTreeMap<String, Stats> = BTreeMap::new();
    let mut printed = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let end = crate::commands::after(a.duration);
    tokio::pin!(end);
    loop {
        if a.count.is_some_and(|c| printed >= c) {
            break;
        }
        let t = tokio::select! {
            t = rx.recv() => match t {
                Some(t) => t,
                None => return Err(CliError::bus("the bus connection was lost")),
            },
            _ = tick.tick(), if a.summary => {
                print_summary(&stats, &counters, start.elapsed());
                continue;
            }
            _ = &mut end => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(d) = decode(&t, &g.prefix, &schema, &mut mem) else {
            counters.undecoded.fetch_add(1, Ordering::Relaxed);
            if !a.summary && !a.errors_only && a.service.is_none() && a.method.is_none() {
                let mut o = Map::new();
                o.insert("time".into(), format_time(t.at).into());
                o.insert("channel".into(), t.channel.clone().into());
                o.insert("kind".into(), "undecoded".into());
                o.insert("payload".into(), json::undecoded(&t.payload, ""));
                crate::commands::print_line(&o.into());
                printed += 1;
            }
            continue;
        };
        if a.service.as_ref().is_some_and(|s| *s != d.service)
            || a.method.as_ref().is_some_and(|m| *m != d.method)
            || (a.errors_only && !d.error)
        {
            continue;
        }
        if a.summary {
            if d.service.is_empty() {
                continue;
            }
            let s = stats
                .entry(format!("{}.{}", d.service, d.method))
                .or_insert_with(Stats::new);
            if d.call {
                s.calls += 1;
            }
            if d.answer {
                s.answers += 1;
                if d.error {
                    s.errors += 1;
                }
            }
            if let Some(l) = d.latency {
                // The first answer of a request only.
                if mem
                    .requests
                    .remove(
                        d.line
                            .get("requestId")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    )
                    .is_some()
                {
                    let _ = s.latency.record((l.as_micros() as u64).max(1));
                }
            }
            continue;
        }
        crate::commands::print_line(&d.line.into());
        printed += 1;
    }
    if a.summary {
        print_summary(&stats, &counters, start.elapsed());
    }
    eprintln!("{}", counters_line(&counters, start.elapsed()));
    Ok(0)
}

/// The peers seen in `d` of traffic: `((service, id), is_server)` for the
/// server ids of claims and responses and the client ids of requests and
/// stream opens.
pub async fn peers(g: &Global, d: Duration) -> CliResult<BTreeMap<(String, String), bool>> {
    let url = g
        .bus
        .as_deref()
        .ok_or_else(|| CliError::input("no bus: give --bus URL or set PSRPC_BUS"))?;
    let counters = Arc::new(Counters::default());
    let mut rx = tap(url, &g.prefix, g.connect_timeout, counters).await?;
    let schema = Schema::default();
    let mut mem = Memory::default();
    let mut out = BTreeMap::new();
    let end = tokio::time::sleep(d);
    tokio::pin!(end);
    loop {
        let t = tokio::select! {
            t = rx.recv() => match t { Some(t) => t, None => break },
            _ = &mut end => break,
        };
        let Some(dec) = decode(&t, &g.prefix, &schema, &mut mem) else {
            continue;
        };
        if dec.service.is_empty() {
            continue;
        }
        for (field, server) in [("serverId", true), ("clientId", false)] {
            if let Some(id) = dec.line.get(field).and_then(Value::as_str) {
                if !id.is_empty() {
                    out.entry((dec.service.clone(), id.to_owned()))
                        .or_insert(server);
                }
            }
        }
    }
    Ok(out)
}
