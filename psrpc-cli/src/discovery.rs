//! Discovery: `psrpc list` and `psrpc describe`, from the descriptions
//! Rust servers give of themselves (`PsrpcDiscovery.Describe`) and, with
//! `--passive`, from the ids seen in traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor};
use psrpc::bus::DynBus;
use serde_json::{Value, json};

use crate::Global;
use crate::commands::{bus, print_line};
use crate::error::CliResult;
use crate::rt;
use crate::schema::{Schema, camel_case};

/// Arguments of `psrpc list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Also watch traffic this many seconds for peers that do not answer
    /// discovery (Go servers and clients).
    #[arg(long, value_parser = crate::parse_duration)]
    pub passive: Option<Duration>,
    /// How long to wait for servers to answer.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub wait: Duration,
}

/// Arguments of `psrpc describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The service (wire or proto name).
    pub service: String,
    /// How long to wait for servers to answer (without --proto).
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub wait: Duration,
}

/// The services described by the servers on the bus.
pub async fn schema(bus: &DynBus, wait: Duration) -> CliResult<Schema> {
    let ds = rt::describe_all(bus, wait).await?;
    Schema::from_descriptor_sets(
        ds.iter()
            .filter(|d| !d.file_descriptor_set.is_empty())
            .map(|d| d.file_descriptor_set.as_slice()),
    )
}

/// `psrpc list`.
pub async fn list(g: &Global, a: ListArgs) -> CliResult<u8> {
    let bus = bus(g).await?;
    let passive = async {
        match a.passive {
            Some(d) => crate::watch::peers(g, d).await.map(Some),
            None => Ok(None),
        }
    };
    let (ds, peers) = tokio::join!(rt::describe_all(&bus, a.wait), passive);
    let (ds, peers) = (ds?, peers?);
    let mut by_service: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut answering: BTreeSet<(String, String)> = BTreeSet::new();
    for d in &ds {
        answering.insert((d.service.clone(), d.server_id.clone()));
        let methods: Vec<Value> = d
            .methods
            .iter()
            .map(|m| {
                let mut o = json!({"name": m.name, "routing": m.routing});
                if m.stream {
                    o["stream"] = true.into();
                }
                if !m.require_claim && m.routing != "MULTI" {
                    o["singleServer"] = true.into();
                }
                if !m.topics.is_empty() {
                    o["topics"] = m.topics.iter().map(|t| json!(t.parts)).collect();
                }
                o
            })
            .collect();
        by_service
            .entry(d.service.clone())
            .or_default()
            .push(json!({
                "serverId": d.server_id,
                "runtime": d.runtime,
                "uptimeMs": d.uptime_ms,
                "callsServed": d.calls_served,
                "callsInFlight": d.calls_in_flight,
                "methods": methods,
            }));
    }
    let mut clients: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(p) = peers {
        for ((service, id), is_server) in p {
            if service == psrpc::discovery::SERVICE {
                continue;
            }
            if is_server {
                if !answering.contains(&(service.clone(), id.clone())) {
                    by_service.entry(service).or_default().push(json!({
                        "serverId": id,
                        "answersDiscovery": false,
                    }));
                }
            } else {
                clients.entry(service).or_default().insert(id);
            }
        }
    }
    let services: BTreeSet<String> = by_service.keys().chain(clients.keys()).cloned().collect();
    for s in services {
        let mut servers = by_service.remove(&s).unwrap_or_default();
        servers.sort_by_key(|v| v["serverId"].as_str().unwrap_or_default().to_owned());
        let mut o = json!({"service": s, "servers": servers});
        if let Some(c) = clients.get(&s) {
            o["clients"] = json!(c);
        }
        print_line(&o);
    }
    Ok(0)
}

/// `psrpc describe`.
pub async fn describe(g: &Global, a: DescribeArgs) -> CliResult<u8> {
    let schema = if g.proto.is_empty() {
        let bus = bus(g).await?;
        schema(&bus, a.wait).await?
    } else {
        Schema::load(&g.proto, &g.import_path)?
    };
    let service = schema.service(&a.service)?;
    print!("{}", proto_text(&schema, &service));
    Ok(0)
}

/// A service and the messages it uses, as proto text.
pub fn proto_text(schema: &Schema, service: &ServiceDescriptor) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "// wire name: {}", camel_case(service.name()));
    if !service.package_name().is_empty() {
        let _ = writeln!(out, "package {};\n", service.package_name());
    }
    let _ = writeln!(out, "service {} {{", service.name());
    let mut messages: Vec<MessageDescriptor> = Vec::new();
    for m in schema.methods(service) {
        let mut opts = Vec::new();
        match m.routing {
            crate::schema::Routing::Queue => {}
            r => opts.push(format!("type = {}", crate::schema::routing_name(r))),
        }
        if m.subscription {
            opts.push("subscription = true".into());
        }
        if m.stream {
            opts.push("stream = true".into());
        }
        if m.topics {
            opts.push("topics = true".into());
            if m.topic_names != ["topic"] {
                opts.push(format!("topic_params.names = {:?}", m.topic_names));
            }
        }
        if m.single_server {
            opts.push("topic_params.single_server = true".into());
        }
        let (i, o) = (m.input(), m.output());
        let sig = format!(
            "  rpc {}({}) returns ({})",
            m.desc.name(),
            i.full_name(),
            o.full_name()
        );
        if opts.is_empty() {
            let _ = writeln!(out, "{sig};");
        } else {
            let _ = writeln!(out, "{sig} {{");
            for o in opts {
                let _ = writeln!(out, "    option (psrpc.options).{o};");
            }
            let _ = writeln!(out, "  }}");
        }
        for d in [i, o] {
            collect(&d, &mut messages);
        }
    }
    let _ = writeln!(out, "}}");
    for m in messages {
        let _ = writeln!(out);
        message_text(&m, &mut out, "");
    }
    out
}

fn collect(m: &MessageDescriptor, out: &mut Vec<MessageDescriptor>) {
    if out.iter().any(|x| x.full_name() == m.full_name()) || m.is_map_entry() {
        return;
    }
    out.push(m.clone());
    for f in m.fields() {
        if let Kind::Message(d) = f.kind() {
            if d.is_map_entry() {
                for f in d.fields() {
                    if let Kind::Message(v) = f.kind() {
                        collect(&v, out);
                    }
                }
            } else {
                collect(&d, out);
            }
        }
    }
}

fn type_name(f: &FieldDescriptor) -> String {
    match f.kind() {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        k => format!("{k:?}").to_lowercase(),
    }
}

fn message_text(m: &MessageDescriptor, out: &mut String, indent: &str) {
    let _ = writeln!(out, "{indent}// {}", m.full_name());
    let _ = writeln!(out, "{indent}message {} {{", m.name());
    for f in m.fields() {
        let label = if f.is_map() {
            let Kind::Message(e) = f.kind() else { continue };
            let (k, v) = (e.map_entry_key_field(), e.map_entry_value_field());
            let _ = writeln!(
                out,
                "{indent}  map<{}, {}> {} = {};",
                type_name(&k),
                type_name(&v),
                f.name(),
                f.number()
            );
            continue;
        } else if f.cardinality() == Cardinality::Repeated {
            "repeated "
        } else if f.supports_presence()
            && f.containing_oneof().is_none()
            && !matches!(f.kind(), Kind::Message(_))
        {
            "optional "
        } else {
            ""
        };
        let oneof = f
            .containing_oneof()
            .map(|o| format!(" // oneof {}", o.name()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{indent}  {label}{} {} = {};{oneof}",
            type_name(&f),
            f.name(),
            f.number()
        );
    }
    for e in m.child_enums() {
        let _ = writeln!(out, "{indent}  enum {} {{", e.name());
        for v in e.values() {
            let _ = writeln!(out, "{indent}    {} = {};", v.name(), v.number());
        }
        let _ = writeln!(out, "{indent}  }}");
    }
    let _ = writeln!(out, "{indent}}}");
}
