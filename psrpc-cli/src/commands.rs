//! `call`, `subscribe`, `publish` and `stream`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use clap::Args;
use psrpc::bus::DynBus;
use tokio::io::AsyncBufReadExt as _;

use crate::Global;
use crate::error::{Class, CliError, CliResult};
use crate::json;
use crate::rt::{self, CallSettings, RawMsg};
use crate::schema::{Method, Routing, Schema};

/// Arguments of `psrpc call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The method: SERVICE.METHOD (wire or proto names).
    pub method: String,
    /// The request as JSON (default: read from stdin).
    pub json: Option<String>,
    #[command(flatten)]
    pub call: CallFlags,
    /// Affinity methods: ignore claims below this affinity.
    #[arg(long)]
    pub min_affinity: Option<f32>,
    /// Affinity methods: take a claim at or above this affinity at once.
    #[arg(long)]
    pub max_affinity: Option<f32>,
}

/// Options of calls and streams.
#[derive(Debug, Args)]
pub struct CallFlags {
    /// A topic value (repeatable, in order), or NAME=VALUE for the topic
    /// parameters the proto names.
    #[arg(long)]
    pub topic: Vec<String>,
    /// The request timeout (e.g. 500ms, 3s).
    #[arg(long, value_parser = crate::parse_duration)]
    pub timeout: Option<Duration>,
    /// Metadata KEY=VALUE sent with the request (repeatable).
    #[arg(long = "metadata", short = 'm')]
    pub metadata: Vec<String>,
    /// The client id (default: a fresh CLI_ id).
    #[arg(long)]
    pub client_id: Option<String>,
}

/// Arguments of `psrpc subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The subscription method: SERVICE.METHOD.
    pub method: String,
    /// A topic value (repeatable), or NAME=VALUE.
    #[arg(long)]
    pub topic: Vec<String>,
    /// Join the queue of a queue subscription (takes updates away from other
    /// consumers). Without it the tool only listens.
    #[arg(long)]
    pub queue: bool,
    /// Exit after this many updates.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this long (e.g. 10s).
    #[arg(long = "for", value_parser = crate::parse_duration)]
    pub duration: Option<Duration>,
}

/// Arguments of `psrpc publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The subscription method: SERVICE.METHOD.
    pub method: String,
    /// The update as JSON (default: one update per stdin line).
    pub json: Option<String>,
    /// A topic value (repeatable), or NAME=VALUE.
    #[arg(long)]
    pub topic: Vec<String>,
}

/// Arguments of `psrpc stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The stream method: SERVICE.METHOD.
    pub method: String,
    #[command(flatten)]
    pub call: CallFlags,
    /// At end of input, keep printing received messages until none came
    /// for this long, then close the stream.
    #[arg(long, default_value = "500ms", value_parser = crate::parse_duration)]
    pub drain: Duration,
}

/// The services: from --proto, or asked of the servers on the bus.
pub async fn schema(g: &Global, bus: Option<&DynBus>) -> CliResult<Schema> {
    if !g.proto.is_empty() {
        return Schema::load(&g.proto, &g.import_path);
    }
    match bus {
        Some(bus) => crate::discovery::schema(bus, Duration::from_secs(1)).await,
        None => Err(CliError::input("give --proto FILE")),
    }
}

/// The schema, before connecting when it comes from --proto (bad input is
/// then reported without touching the bus); otherwise the bus it was asked on.
pub async fn schema_first(g: &Global) -> CliResult<(Schema, Option<DynBus>)> {
    if !g.proto.is_empty() {
        return Ok((Schema::load(&g.proto, &g.import_path)?, None));
    }
    let b = bus(g).await?;
    Ok((schema(g, Some(&b)).await?, Some(b)))
}

/// Connects to the bus of `--bus` / `PSRPC_BUS`.
pub async fn bus(g: &Global) -> CliResult<DynBus> {
    let url = g
        .bus
        .as_deref()
        .ok_or_else(|| CliError::input("no bus: give --bus URL or set PSRPC_BUS"))?;
    rt::connect(url, &g.prefix, g.connect_timeout).await
}

/// The wire topic of `method` from `--topic` values.
pub fn topic(method: &Method, values: &[String]) -> CliResult<Vec<String>> {
    let named: Vec<Option<(&str, &str)>> = values.iter().map(|v| v.split_once('=')).collect();
    if !method.topics {
        if !values.is_empty() && !method.subscription {
            return Err(CliError::input(format!(
                "{}.{} takes no topic",
                method.service, method.name
            )));
        }
        return Ok(values.to_vec());
    }
    let names = &method.topic_names;
    if named.iter().all(Option::is_some) && !values.is_empty() && names.len() > 1 {
        let mut out = Vec::new();
        for n in names {
            let v = named
                .iter()
                .flatten()
                .find(|(k, _)| {
                    k == n || crate::schema::camel_case(k) == crate::schema::camel_case(n)
                })
                .ok_or_else(|| CliError::input(format!("missing --topic {n}=VALUE")))?;
            out.push(v.1.to_owned());
        }
        for (k, _) in named.iter().flatten() {
            if !names
                .iter()
                .any(|n| n == k || crate::schema::camel_case(k) == crate::schema::camel_case(n))
            {
                return Err(CliError::input(format!(
                    "unknown topic parameter {k:?} (the method has {})",
                    names.join(", ")
                )));
            }
        }
        return Ok(out);
    }
    // Positional values; NAME=VALUE with a known NAME is taken by value.
    let out: Vec<String> = values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if names.iter().any(|n| n == k) => val.to_owned(),
            _ => v.clone(),
        })
        .collect();
    if out.len() != names.len() {
        return Err(CliError::input(format!(
            "{}.{} takes {} topic value(s) ({}), got {}",
            method.service,
            method.name,
            names.len(),
            names.join(", "),
            out.len()
        )));
    }
    Ok(out)
}

fn metadata(pairs: &[String]) -> CliResult<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::input(format!("--metadata {p:?}: expected KEY=VALUE")))
        })
        .collect()
}

fn read_stdin() -> CliResult<String> {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .map_err(|e| CliError::input(format!("reading stdin: {e}")))?;
    Ok(s)
}

/// Prints one JSON document on its own line, flushed.
pub fn print_line(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// `psrpc call`.
pub async fn call(g: &Global, a: CallArgs) -> CliResult<u8> {
    let (schema, early_bus) = schema_first(g).await?;
    let method = schema.method(&a.method)?;
    check_call(&method)?;
    let topic = topic(&method, &a.call.topic)?;
    let text = match &a.json {
        Some(j) => j.clone(),
        None => read_stdin()?,
    };
    let req = json::encode(&method.input(), &text)?;
    let settings = CallSettings {
        timeout: a.call.timeout,
        metadata: metadata(&a.call.metadata)?,
        client_id: a.call.client_id.clone(),
        min_affinity: a.min_affinity,
        max_affinity: a.max_affinity,
    };
    let bus = match early_bus {
        Some(b) => b,
        None => bus(g).await?,
    };
    let mut caller = rt::Caller::new(bus, &method.service, settings.client_id.clone()).await?;
    let info = method.info();
    let out = method.output();
    let pool = schema.pool().clone();
    if method.routing == Routing::Multi {
        let (mut ok, mut failed) = (0usize, Vec::new());
        let verbose = g.verbose;
        let r = caller
            .multi(&info, &topic, req, &settings, |ans| {
                let mut o = serde_json::Map::new();
                o.insert("serverId".into(), ans.server_id.clone().into());
                match &ans.result {
                    Ok(b) => {
                        ok += 1;
                        o.insert("response".into(), json::decode(&out, b));
                    }
                    Err(e) => {
                        let ce = rt::call_error(e, Some(&pool));
                        o.insert("error".into(), ce.to_json());
                        failed.push(ce);
                    }
                }
                if verbose {
                    eprintln!(
                        "request {} answered by {} in {:.1} ms",
                        ans.request_id,
                        ans.server_id,
                        ans.elapsed.as_secs_f64() * 1000.0
                    );
                }
                print_line(&o.into());
            })
            .await;
        caller.close();
        if let Err(e) = r {
            return Err(rt::call_error(&e, Some(&pool)));
        }
        if ok == 0 {
            return match failed.into_iter().next() {
                Some(mut e) => {
                    e.message =
                        format!("every server answered with an error; first: {}", e.message);
                    Err(e)
                }
                None => Err(CliError::call(
                    "unavailable",
                    "no server answered before the timeout",
                    Vec::new(),
                )),
            };
        }
        return Ok(0);
    }
    let ans = caller.unary(&info, &topic, req, &settings).await;
    caller.close();
    if g.verbose {
        eprintln!(
            "request {} answered by {} in {:.1} ms",
            if ans.request_id.is_empty() {
                "?"
            } else {
                &ans.request_id
            },
            if ans.server_id.is_empty() {
                "?"
            } else {
                &ans.server_id
            },
            ans.elapsed.as_secs_f64() * 1000.0
        );
    }
    match ans.result {
        Ok(b) => {
            print_line(&json::decode(&out, &b));
            Ok(0)
        }
        Err(e) => Err(rt::call_error(&e, Some(&pool))),
    }
}

fn check_call(m: &Method) -> CliResult<()> {
    if m.subscription {
        return Err(CliError::input(format!(
            "{}.{} is a subscription: use `psrpc subscribe` or `psrpc publish`",
            m.service, m.name
        )));
    }
    if m.stream {
        return Err(CliError::input(format!(
            "{}.{} is a stream: use `psrpc stream`",
            m.service, m.name
        )));
    }
    Ok(())
}

fn subscription_method(schema: &Schema, name: &str) -> CliResult<Method> {
    let m = schema.method(name)?;
    if !m.subscription {
        return Err(CliError::input(format!(
            "{}.{} is not a subscription method",
            m.service, m.name
        )));
    }
    Ok(m)
}

/// `psrpc subscribe`.
pub async fn subscribe(g: &Global, a: SubscribeArgs) -> CliResult<u8> {
    let bus = bus(g).await?;
    let schema = schema(g, Some(&bus)).await?;
    let method = subscription_method(&schema, &a.method)?;
    let topic = topic(&method, &a.topic)?;
    let info = method.info();
    let mut sub = rt::subscribe(
        &bus,
        &method.service,
        &info,
        &topic,
        a.queue && info.routing() == Routing::Queue,
    )
    .await?;
    if g.verbose {
        eprintln!(
            "subscribed to {}.{}{}",
            method.service,
            method.name,
            if a.queue { " (queue member)" } else { "" }
        );
    }
    let out = method.output();
    let mut n = 0u64;
    let end = crate::commands::after(a.duration);
    tokio::pin!(end);
    loop {
        if a.count.is_some_and(|c| n >= c) {
            break;
        }
        let b = tokio::select! {
            b = sub.recv() => b,
            _ = &mut end => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(b) = b else {
            return Err(CliError::bus(
                "the subscription ended (bus connection lost)",
            ));
        };
        n += 1;
        match rt::update(b) {
            Ok(u) => {
                let name = u.type_url.rsplit('/').next().unwrap_or_default();
                let desc = if name == out.full_name() {
                    Some(out.clone())
                } else {
                    schema.message(name)
                };
                print_line(&match desc {
                    Some(d) => json::decode(&d, &u.value),
                    None => json::undecoded(&u.value, &format!("unknown type {}", u.type_url)),
                });
            }
            Err(e) => eprintln!("warning: an update that is not a psrpc message: {e}"),
        }
    }
    Ok(0)
}

/// `psrpc publish`.
pub async fn publish(g: &Global, a: PublishArgs) -> CliResult<u8> {
    let (schema, early_bus) = schema_first(g).await?;
    let method = subscription_method(&schema, &a.method)?;
    let topic = topic(&method, &a.topic)?;
    let docs: Vec<String> = match a.json {
        Some(j) => vec![j],
        None => read_stdin()?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let out = method.output();
    let encoded = docs
        .iter()
        .map(|d| json::encode(&out, d))
        .collect::<CliResult<Vec<_>>>()?;
    let bus = match early_bus {
        Some(b) => b,
        None => bus(g).await?,
    };
    for b in encoded {
        rt::publish(
            &bus,
            &method.service,
            &method.info(),
            &topic,
            out.full_name(),
            &b,
        )
        .await?;
    }
    Ok(0)
}

/// `psrpc stream`.
pub async fn stream(g: &Global, a: StreamArgs) -> CliResult<u8> {
    let bus = bus(g).await?;
    let schema = schema(g, Some(&bus)).await?;
    let method = schema.method(&a.method)?;
    if !method.stream {
        return Err(CliError::input(format!(
            "{}.{} is not a stream method",
            method.service, method.name
        )));
    }
    let topic = topic(&method, &a.call.topic)?;
    let settings = CallSettings {
        timeout: a.call.timeout,
        metadata: metadata(&a.call.metadata)?,
        client_id: a.call.client_id.clone(),
        ..Default::default()
    };
    let caller = rt::Caller::new(bus, &method.service, settings.client_id.clone()).await?;
    let pool = schema.pool().clone();
    let mut stream = caller
        .stream(&method.info(), topic, &settings)
        .await
        .map_err(|e| rt::call_error(&e, Some(&pool)))?;
    if g.verbose {
        eprintln!("stream {} open", stream.stream_id());
    }
    let (input, output) = (method.input(), method.output());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => {
                    let b = match json::encode(&input, &l) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = stream.close_with(psrpc::Error::new(psrpc::ErrorCode::Canceled, "bad input")).await;
                            return Err(e);
                        }
                    };
                    if let Err(e) = stream.send(RawMsg(b)).await {
                        return Err(send_failed(e, &pool));
                    }
                }
                Ok(None) => {
                    loop {
                        match tokio::time::timeout(a.drain, stream.recv()).await {
                            Ok(Ok(Some(RawMsg(b)))) => print_line(&json::decode(&output, &b)),
                            Ok(Ok(None)) => return Err(server_closed(None, &pool)),
                            Ok(Err(e)) => return Err(server_closed(Some(e), &pool)),
                            Err(_) => break,
                        }
                    }
                    let _ = stream.close().await;
                    if g.verbose {
                        eprintln!("stream closed (end of input)");
                    }
                    return Ok(0);
                }
                Err(e) => {
                    let _ = stream.close().await;
                    return Err(CliError::input(format!("reading stdin: {e}")));
                }
            },
            m = stream.recv() => match m {
                Ok(Some(RawMsg(b))) => print_line(&json::decode(&output, &b)),
                Ok(None) => return Err(server_closed(None, &pool)),
                Err(e) => return Err(server_closed(Some(e), &pool)),
            },
        }
    }
}

/// The cause of a close by the server (`None`: a clean close).
fn server_closed(cause: Option<psrpc::Error>, pool: &prost_reflect::DescriptorPool) -> CliError {
    let e = cause.unwrap_or_else(psrpc::Error::stream_closed);
    let mut ce = rt::call_error(&e, Some(pool));
    ce.message = format!("stream closed by the server: {}", ce.message);
    ce
}

/// A failed send: on a closed stream its error is why the stream ended.
fn send_failed(e: psrpc::Error, pool: &prost_reflect::DescriptorPool) -> CliError {
    let mut ce = rt::call_error(&e, Some(pool));
    if ce.class == Class::Internal {
        ce.class = Class::Bus;
    }
    ce
}

/// Ends after `duration` (`--for`), or never without one.
pub(crate) async fn after(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
