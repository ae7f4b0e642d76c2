//! Service descriptions: proto files parsed with protox (psrpc's
//! `options.proto` built in), or file descriptor sets from discovery; the
//! routing of each method read from its psrpc options.

use std::path::{Path, PathBuf};

use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ServiceDescriptor, Value,
};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::error::{Class, CliError, CliResult};

/// psrpc's method options, as Go's generator reads them.
pub const OPTIONS_PROTO: &str = include_str!("../../psrpc-build/proto/psrpc/options.proto");

/// Serves `options.proto` (also as `psrpc/options.proto`) from the binary.
struct BuiltinOptions;

impl FileResolver for BuiltinOptions {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match name {
            "options.proto" | "psrpc/options.proto" => File::from_source(name, OPTIONS_PROTO),
            _ => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// How a method is routed, from its psrpc options (the runtime's enum).
pub use psrpc::Routing;

/// The proto name of a routing (`QUEUE`, `AFFINITY`, `MULTI`).
pub fn routing_name(r: Routing) -> &'static str {
    match r {
        Routing::Queue => "QUEUE",
        Routing::Affinity => "AFFINITY",
        Routing::Multi => "MULTI",
    }
}

/// A method of a service and what its psrpc options say.
#[derive(Debug, Clone)]
pub struct Method {
    /// The service name on the wire.
    pub service: String,
    /// The method name on the wire.
    pub name: String,
    /// The proto descriptor.
    pub desc: MethodDescriptor,
    /// Its routing.
    pub routing: Routing,
    /// A subscription method (servers publish, clients subscribe).
    pub subscription: bool,
    /// A bidirectional stream.
    pub stream: bool,
    /// Addressed by topic.
    pub topics: bool,
    /// The names of the topic parameters (`topic` when the proto names none).
    pub topic_names: Vec<String>,
    /// No claim handshake (`topic_params.single_server`).
    pub single_server: bool,
}

impl Method {
    /// The runtime's descriptor of the method, on raw messages.
    pub fn info(&self) -> crate::rt::DynMethod {
        let m = psrpc::Method::dynamic(self.name.clone(), self.routing);
        if self.single_server {
            m.single_server()
        } else {
            m
        }
    }

    /// The request (input) message.
    pub fn input(&self) -> MessageDescriptor {
        self.desc.input()
    }

    /// The response (output) message.
    pub fn output(&self) -> MessageDescriptor {
        self.desc.output()
    }
}

/// CamelCase as protoc-gen-go spells it: the wire names of services and methods.
pub fn camel_case(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    if b.first() == Some(&b'_') {
        out.push('X');
        i = 1;
    }
    while i < b.len() {
        let c = b[i];
        if c == b'_' && i + 1 < b.len() && b[i + 1].is_ascii_lowercase() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            out.push(c as char);
            i += 1;
            continue;
        }
        out.push(c.to_ascii_uppercase() as char);
        while i + 1 < b.len() && b[i + 1].is_ascii_lowercase() {
            i += 1;
            out.push(b[i] as char);
        }
        i += 1;
    }
    out
}

/// Every service and message the tool knows.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pool: DescriptorPool,
}

impl Schema {
    /// Parses `protos` with the include directories `includes` (the
    /// directory of each proto file is one too when none are given).
    pub fn load(protos: &[PathBuf], includes: &[PathBuf]) -> CliResult<Schema> {
        let mut dirs: Vec<PathBuf> = includes.to_vec();
        if dirs.is_empty() {
            for p in protos {
                let d = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let d = if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                };
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        let mut resolver = ChainFileResolver::new();
        for d in &dirs {
            resolver.add(IncludeFileResolver::new(d.clone()));
        }
        resolver.add(BuiltinOptions);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        for p in protos {
            if !p.exists() {
                return Err(CliError::new(
                    Class::Proto,
                    format!("{}: no such file", p.display()),
                ));
            }
            // A file given by path must be under an include directory;
            // name it relative to the first one that holds it.
            let rel = dirs
                .iter()
                .find_map(|d| p.strip_prefix(d).ok().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(p.file_name().unwrap_or_default()));
            compiler
                .open_file(&rel)
                .map_err(|e| CliError::new(Class::Proto, proto_error(&e)))?;
        }
        Ok(Schema {
            pool: compiler.descriptor_pool(),
        })
    }

    /// A schema from encoded file descriptor sets (from discovery). Sets
    /// that do not fit with those before are skipped with a warning.
    pub fn from_descriptor_sets<'a>(sets: impl IntoIterator<Item = &'a [u8]>) -> CliResult<Schema> {
        let mut pool = DescriptorPool::new();
        let mut seen: Vec<&[u8]> = Vec::new();
        for s in sets {
            if seen.contains(&s) {
                continue;
            }
            seen.push(s);
            // Decoded by prost-reflect itself, which keeps the options'
            // extensions (psrpc's routing).
            if let Err(e) = pool.decode_file_descriptor_set(s) {
                eprintln!("warning: a service description that does not fit the others: {e}");
            }
        }
        if pool.get_extension_by_name("psrpc.options").is_none() {
            let opts = options_pool()?;
            let _ = pool.decode_file_descriptor_set(opts.encode_file_descriptor_set().as_slice());
        }
        Ok(Schema { pool })
    }

    /// The descriptor pool.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The service with wire name or full proto name `name`.
    pub fn service(&self, name: &str) -> CliResult<ServiceDescriptor> {
        self.pool
            .services()
            .find(|s| s.full_name() == name || camel_case(s.name()) == name)
            .ok_or_else(|| {
                let known: Vec<String> = self.pool.services().map(|s| camel_case(s.name())).collect();
                CliError::input(if known.is_empty() {
                    format!("unknown service {name:?}: no service is known (give --proto FILE, or run servers that answer discovery)")
                } else {
                    format!("unknown service {name:?} (known: {})", known.join(", "))
                })
            })
    }

    /// The method `SERVICE.METHOD` (wire or proto names; the service may be
    /// fully qualified).
    pub fn method(&self, full: &str) -> CliResult<Method> {
        let (svc, m) = full
            .rsplit_once(['.', '/'])
            .ok_or_else(|| CliError::input(format!("{full:?}: expected SERVICE.METHOD")))?;
        let service = self.service(svc)?;
        let desc = service
            .methods()
            .find(|d| d.name() == m || camel_case(d.name()) == m)
            .ok_or_else(|| {
                let known: Vec<String> = service.methods().map(|d| camel_case(d.name())).collect();
                CliError::input(format!(
                    "unknown method {m:?} of service {svc} (known: {})",
                    known.join(", ")
                ))
            })?;
        Ok(method_of(&service, desc))
    }

    /// Every method of `service`.
    pub fn methods(&self, service: &ServiceDescriptor) -> Vec<Method> {
        service.methods().map(|d| method_of(service, d)).collect()
    }

    /// Finds the method by its wire names.
    pub fn by_wire(&self, service: &str, method: &str) -> Option<Method> {
        let s = self
            .pool
            .services()
            .find(|s| camel_case(s.name()) == service)?;
        let d = s.methods().find(|d| camel_case(d.name()) == method)?;
        Some(method_of(&s, d))
    }

    /// The message with full name `name`.
    pub fn message(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }
}

/// protox's error with its file and line (its `Debug` form is
/// `file:line:column: message`).
fn proto_error(e: &protox::Error) -> String {
    let s = format!("{e:?}");
    match e.file() {
        Some(f) if !s.contains(f) => format!("{f}: {s}"),
        _ => s,
    }
}

fn method_of(service: &ServiceDescriptor, desc: MethodDescriptor) -> Method {
    let mut m = Method {
        service: camel_case(service.name()),
        name: camel_case(desc.name()),
        routing: Routing::Queue,
        subscription: false,
        stream: false,
        topics: false,
        topic_names: Vec::new(),
        single_server: false,
        desc: desc.clone(),
    };
    if let Some(opts) = psrpc_options(&desc) {
        let b = |n: &str| {
            matches!(
                opts.get_field_by_name(n).as_deref(),
                Some(Value::Bool(true))
            )
        };
        m.subscription = b("subscription");
        m.stream = b("stream");
        m.topics = b("topics");
        m.routing = match opts.get_field_by_name("type").as_deref() {
            Some(Value::EnumNumber(1)) => Routing::Affinity,
            Some(Value::EnumNumber(2)) => Routing::Multi,
            _ => Routing::Queue,
        };
        // The deprecated oneof overrides `type` by presence.
        if opts.has_field_by_name("multi") {
            m.routing = Routing::Multi;
        } else if opts.has_field_by_name("affinity_func") {
            m.routing = Routing::Affinity;
        } else if opts.has_field_by_name("queue") {
            m.routing = Routing::Queue;
        }
        if let Some(Value::Message(tp)) = opts.get_field_by_name("topic_params").as_deref() {
            if let Some(Value::List(names)) = tp.get_field_by_name("names").as_deref() {
                m.topic_names = names
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
            }
            m.single_server = matches!(
                tp.get_field_by_name("single_server").as_deref(),
                Some(Value::Bool(true))
            );
        }
    }
    if m.topics && m.topic_names.is_empty() {
        m.topic_names.push("topic".into());
    }
    m
}

/// The `(psrpc.options)` of a method, when set.
fn psrpc_options(desc: &MethodDescriptor) -> Option<DynamicMessage> {
    let opts = desc.options();
    let ext = desc.parent_pool().get_extension_by_name("psrpc.options")?;
    if !opts.has_extension(&ext) {
        return None;
    }
    match opts.get_extension(&ext).as_ref() {
        Value::Message(m) => Some(m.clone()),
        _ => None,
    }
}

/// A pool with psrpc's `options.proto` (and its imports) alone.
fn options_pool() -> CliResult<protox::Compiler> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(BuiltinOptions);
    resolver.add(GoogleFileResolver::new());
    let mut c = protox::Compiler::with_file_resolver(resolver);
    c.include_imports(true);
    c.open_file("options.proto")
        .map_err(|e| CliError::new(Class::Internal, e.to_string()))?;
    Ok(c)
}
