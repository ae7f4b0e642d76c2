//! What is generated for each service, read from the descriptor pool:
//! resolved options, wire names, collision-free Rust names, and the checks
//! that reject what cannot be generated.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost_reflect::{DescriptorPool, ExtensionDescriptor, MethodDescriptor, ServiceDescriptor};

use crate::naming::{go_camel_case, ident, shouty, snake, upper_camel};
use crate::options::{EXTENSION_NUMBER, MethodOptions, OptionsProto, Routing};

/// One topic parameter of a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicParam {
    /// The name in `topic_params.names` (`topic` when there are none).
    pub(crate) proto_name: String,
    /// The Rust parameter name (snake_case; not yet keyword-escaped).
    pub(crate) rust_name: String,
    /// The newtype of a typed parameter (`RoomTopicType`).
    pub(crate) typed: Option<String>,
}

/// One method of a service.
#[derive(Debug, Clone)]
pub(crate) struct MethodSpec {
    pub(crate) proto_name: String,
    /// CamelCase(proto name): the method name on the wire.
    pub(crate) wire_name: String,
    pub(crate) opts: MethodOptions,
    /// The snake_case base of every Rust name derived from the method.
    pub(crate) base: String,
    /// Why `base` is not the plain snake_case name, when it is not.
    pub(crate) renamed: Option<String>,
    pub(crate) topics: Vec<TopicParam>,
}

impl MethodSpec {
    pub(crate) fn static_name(&self) -> String {
        shouty(&self.base)
    }

    pub(crate) fn client_fn(&self) -> String {
        if self.opts.subscription {
            format!("subscribe_{}", self.base)
        } else {
            self.base.clone()
        }
    }

    pub(crate) fn affinity_fn(&self) -> Option<String> {
        (!self.opts.subscription && self.opts.routing == Routing::Affinity)
            .then(|| format!("{}_affinity", self.base))
    }

    pub(crate) fn register_fn(&self) -> String {
        format!("register_{}_topic", self.base)
    }

    pub(crate) fn deregister_fn(&self) -> String {
        format!("deregister_{}_topic", self.base)
    }

    pub(crate) fn publish_fn(&self) -> String {
        format!("publish_{}", self.base)
    }

    /// Every name this method takes, by scope.
    fn names(&self) -> Vec<(Scope, String)> {
        let mut names = vec![
            (Scope::Client, ident(&self.client_fn()).to_string()),
            (Scope::Methods, self.static_name()),
        ];
        if !self.opts.subscription {
            names.push((Scope::ServerImpl, ident(&self.base).to_string()));
        }
        if let Some(a) = self.affinity_fn() {
            names.push((Scope::ServerImpl, a));
        }
        if self.opts.subscription {
            names.push((Scope::Server, self.publish_fn()));
        } else if self.opts.topics {
            names.push((Scope::Server, self.register_fn()));
            names.push((Scope::Server, self.deregister_fn()));
        }
        names
    }
}

/// Methods of one topic group, registered and deregistered together.
#[derive(Debug, Clone)]
pub(crate) struct GroupSpec {
    pub(crate) proto_name: String,
    pub(crate) base: String,
    /// Indexes into the service's methods.
    pub(crate) members: Vec<usize>,
    pub(crate) topics: Vec<TopicParam>,
}

impl GroupSpec {
    pub(crate) fn register_all_fn(&self) -> String {
        format!("register_all_{}_topics", self.base)
    }
    pub(crate) fn deregister_all_fn(&self) -> String {
        format!("deregister_all_{}_topics", self.base)
    }
}

/// One service.
#[derive(Debug, Clone)]
pub(crate) struct ServiceSpec {
    pub(crate) file: String,
    pub(crate) package: String,
    pub(crate) proto_name: String,
    /// CamelCase(proto name): the service name on the wire.
    pub(crate) wire_name: String,
    /// UpperCamelCase(proto name), as prost-build names the service.
    pub(crate) rust_name: String,
    pub(crate) methods: Vec<MethodSpec>,
    pub(crate) groups: Vec<GroupSpec>,
    /// Notes for the build script's output (`cargo:warning`).
    pub(crate) warnings: Vec<String>,
}

impl ServiceSpec {
    pub(crate) fn client_type(&self) -> String {
        format!("{}Client", self.rust_name)
    }
    pub(crate) fn server_impl_trait(&self) -> String {
        format!("{}ServerImpl", self.rust_name)
    }
    pub(crate) fn server_type(&self) -> String {
        format!("{}Server", self.rust_name)
    }
    pub(crate) fn methods_module(&self) -> String {
        format!("{}_methods", snake(&self.rust_name))
    }

    /// Every item this service adds to its package's module.
    fn item_names(&self) -> Vec<String> {
        let mut names = vec![
            self.client_type(),
            self.server_impl_trait(),
            self.server_type(),
            self.methods_module(),
        ];
        names.extend(self.typed_topic_types());
        names
    }

    /// The typed topic newtypes of this service, in method order, once each.
    pub(crate) fn typed_topic_types(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.methods
            .iter()
            .flat_map(|m| &m.topics)
            .filter_map(|t| t.typed.clone())
            .filter(|t| seen.insert(t.clone()))
            .collect()
    }

    /// `(type name, proto name)` of each typed topic parameter.
    pub(crate) fn typed_topics(&self) -> Vec<(String, String)> {
        let mut seen = HashSet::new();
        self.methods
            .iter()
            .flat_map(|m| &m.topics)
            .filter_map(|t| t.typed.clone().map(|ty| (ty, t.proto_name.clone())))
            .filter(|(ty, _)| seen.insert(ty.clone()))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Client,
    ServerImpl,
    Server,
    Methods,
}

/// Names taken by the hand-written parts of each generated type, and by the
/// traits they implement (a same-named inherent method would shadow them).
fn reserved(scope: Scope) -> Vec<&'static str> {
    const TRAIT_METHODS: &[&str] = &[
        "clone",
        "clone_from",
        "fmt",
        "to_owned",
        "into",
        "try_into",
        "from",
        "borrow",
        "borrow_mut",
        "type_id",
    ];
    let own: &[&str] = match scope {
        Scope::Client => &["new", "with_options", "rpc_client", "close"],
        Scope::Server => &[
            "new",
            "with_options",
            "from_arc",
            "rpc_server",
            "shutdown",
            "kill",
        ],
        Scope::ServerImpl => &[],
        Scope::Methods => return vec!["SERVICE", "FILE_DESCRIPTOR_SET", "METHODS"],
    };
    own.iter().chain(TRAIT_METHODS).copied().collect()
}

/// Topic parameter names that would clash with the other parameters of the
/// generated functions.
const RESERVED_PARAMS: &[&str] = &["req", "msg", "stream", "ctx", "self", "svc"];

/// Why generation fails, with the place and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) file: String,
    pub(crate) service: String,
    pub(crate) method: Option<String>,
    pub(crate) message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.method {
            Some(m) => write!(
                f,
                "{}: service {}, method {}: {}",
                self.file, self.service, m, self.message
            ),
            None => write!(
                f,
                "{}: service {}: {}",
                self.file, self.service, self.message
            ),
        }
    }
}

/// Whether a file is the psrpc options file, or the `options.proto` alias
/// that only re-exports it (no package, no items of its own).
pub(crate) fn is_psrpc_options_file(name: &str, package: &str, own_items: bool) -> bool {
    (name == "options.proto" || name == "psrpc/options.proto")
        && (package == "psrpc" || (package.is_empty() && !own_items))
}

/// Reads every service of the pool (outside `google.protobuf` and the psrpc
/// options) into specs, keyed by `(proto package, service proto name)`.
pub(crate) fn read_services(
    pool: &DescriptorPool,
) -> Result<BTreeMap<(String, String), ServiceSpec>, Vec<Problem>> {
    let ext = pool
        .get_message_by_name("google.protobuf.MethodOptions")
        .and_then(|m| m.get_extension(EXTENSION_NUMBER));
    let mut problems = Vec::new();
    let mut specs = BTreeMap::new();
    for file in pool.files() {
        let own_items =
            file.messages().len() > 0 || file.enums().len() > 0 || file.services().len() > 0;
        if is_psrpc_options_file(file.name(), file.package_name(), own_items)
            || file.package_name() == "google.protobuf"
        {
            continue;
        }
        for service in file.services() {
            match read_service(&service, ext.as_ref()) {
                Ok(spec) => {
                    specs.insert((spec.package.clone(), spec.proto_name.clone()), spec);
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
    }
    check_packages(pool, &specs, &mut problems);
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

fn method_options(
    method: &MethodDescriptor,
    ext: Option<&ExtensionDescriptor>,
) -> Result<MethodOptions, String> {
    let Some(ext) = ext else {
        return Ok(MethodOptions::none());
    };
    let options = method.options();
    if !options.has_extension(ext) {
        return Ok(MethodOptions::none());
    }
    match options.get_extension(ext).as_message() {
        Some(m) => m
            .transcode_to::<OptionsProto>()
            .map(|o| MethodOptions::resolve(&o))
            .map_err(|e| format!("cannot read the psrpc options: {e}")),
        None => Err("the psrpc option (extension 2198) is not a psrpc.Options message".into()),
    }
}

fn read_service(
    service: &ServiceDescriptor,
    ext: Option<&ExtensionDescriptor>,
) -> Result<ServiceSpec, Vec<Problem>> {
    let file = service.parent_file().name().to_owned();
    let problem = |method: Option<&str>, message: String| Problem {
        file: file.clone(),
        service: service.name().to_owned(),
        method: method.map(str::to_owned),
        message,
    };
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut methods: Vec<MethodSpec> = Vec::new();
    let mut wire_names: HashMap<String, String> = HashMap::new();
    let mut taken: HashSet<(Scope, String)> = HashSet::new();
    for scope in [
        Scope::Client,
        Scope::Server,
        Scope::ServerImpl,
        Scope::Methods,
    ] {
        for r in reserved(scope) {
            taken.insert((scope, r.to_owned()));
        }
    }

    for method in service.methods() {
        let name = method.name().to_owned();
        let opts = match method_options(&method, ext) {
            Ok(o) => o,
            Err(e) => {
                problems.push(problem(Some(&name), e));
                continue;
            }
        };
        if let Some(p) = opts.problem() {
            problems.push(problem(Some(&name), p));
            continue;
        }
        if method.is_client_streaming() || method.is_server_streaming() {
            warnings.push(format!(
                "{file}: service {}, method {name}: psrpc ignores the gRPC `stream` keyword \
                 (as Go psrpc does); for a psrpc stream use `option (psrpc.options).stream = true;`",
                service.name()
            ));
        }
        let wire_name = go_camel_case(&name);
        if let Some(other) = wire_names.insert(wire_name.clone(), name.clone()) {
            problems.push(problem(
                Some(&name),
                format!(
                    "methods {other} and {name} have the same name on the wire (\"{wire_name}\"), \
                     so servers could not tell their requests apart; rename one"
                ),
            ));
            continue;
        }
        let topics = topic_params(&opts);
        let plain = snake(&name);
        let mut spec = MethodSpec {
            proto_name: name.clone(),
            wire_name,
            opts,
            base: plain.clone(),
            renamed: None,
            topics,
        };
        // The first method keeps its name; a later one whose names are
        // taken (methods differing only by case, a method named like
        // another's derived function) gets the first free `_2`, `_3`, ...
        let mut n = 1;
        while spec.names().iter().any(|k| taken.contains(k)) {
            n += 1;
            spec.base = format!("{plain}_{n}");
        }
        if n > 1 {
            spec.renamed = Some(format!(
                "Named `{}` because the names derived from `{plain}` are taken by another \
                 method or by the generated API.",
                spec.base
            ));
        }
        taken.extend(spec.names());
        methods.push(spec);
    }

    let groups = topic_groups(&methods, &mut taken).unwrap_or_else(|(method, message)| {
        problems.push(problem(Some(&method), message));
        Vec::new()
    });

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ServiceSpec {
        file,
        package: service.package_name().to_owned(),
        proto_name: service.name().to_owned(),
        wire_name: go_camel_case(service.name()),
        rust_name: upper_camel(service.name()),
        methods,
        groups,
        warnings,
    })
}

fn topic_params(opts: &MethodOptions) -> Vec<TopicParam> {
    if !opts.topics {
        return Vec::new();
    }
    if opts.topic_names.is_empty() {
        return vec![TopicParam {
            proto_name: "topic".into(),
            rust_name: "topic".into(),
            typed: None,
        }];
    }
    opts.topic_names
        .iter()
        .map(|n| {
            let mut rust_name = snake(n);
            if RESERVED_PARAMS.contains(&rust_name.as_str()) {
                rust_name.push_str("_topic");
            }
            TopicParam {
                proto_name: n.clone(),
                rust_name,
                typed: opts
                    .typed
                    .then(|| format!("{}TopicType", upper_camel(&go_camel_case(n)))),
            }
        })
        .collect()
}

fn topic_groups(
    methods: &[MethodSpec],
    taken: &mut HashSet<(Scope, String)>,
) -> Result<Vec<GroupSpec>, (String, String)> {
    let mut groups: Vec<GroupSpec> = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        if m.opts.group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|g| g.proto_name == m.opts.group) {
            Some(g) => {
                if g.topics != m.topics {
                    return Err((
                        m.proto_name.clone(),
                        format!(
                            "all members of topic group \"{}\" must have the same parameter \
                             names and typed values; give {} the `topic_params` names and \
                             `typed` of {}",
                            m.opts.group, m.proto_name, methods[g.members[0]].proto_name
                        ),
                    ));
                }
                g.members.push(i);
            }
            None => groups.push(GroupSpec {
                proto_name: m.opts.group.clone(),
                base: snake(&m.opts.group),
                members: vec![i],
                topics: m.topics.clone(),
            }),
        }
    }
    for g in &mut groups {
        let plain = g.base.clone();
        let mut n = 1;
        while taken.contains(&(Scope::Server, g.register_all_fn()))
            || taken.contains(&(Scope::Server, g.deregister_all_fn()))
        {
            n += 1;
            g.base = format!("{plain}_{n}");
        }
        taken.insert((Scope::Server, g.register_all_fn()));
        taken.insert((Scope::Server, g.deregister_all_fn()));
    }
    Ok(groups)
}

/// Checks, per proto package, that the items the services add do not
/// collide with each other or with the messages and enums prost generates.
fn check_packages(
    pool: &DescriptorPool,
    specs: &BTreeMap<(String, String), ServiceSpec>,
    problems: &mut Vec<Problem>,
) {
    let mut by_package: BTreeMap<&str, Vec<&ServiceSpec>> = BTreeMap::new();
    for s in specs.values() {
        by_package.entry(&s.package).or_default().push(s);
    }
    for (package, services) in by_package {
        // What prost puts in the package module: a type per message and
        // enum, and a module per message with nested items.
        let mut prost_items: HashMap<String, String> = HashMap::new();
        for m in pool.all_messages() {
            if m.package_name() != package || m.parent_message().is_some() {
                continue;
            }
            prost_items.insert(upper_camel(m.name()), format!("message {}", m.name()));
            let nested = m.child_messages().any(|c| !c.is_map_entry())
                || m.child_enums().len() > 0
                || m.oneofs().any(|o| !o.is_synthetic());
            if nested {
                prost_items.insert(snake(m.name()), format!("message {}", m.name()));
            }
        }
        for e in pool.all_enums() {
            if e.package_name() == package && e.parent_message().is_none() {
                prost_items.insert(upper_camel(e.name()), format!("enum {}", e.name()));
            }
        }
        let mut ours: HashMap<String, &str> = HashMap::new();
        let mut typed: HashMap<String, &str> = HashMap::new();
        for s in services {
            let own_typed = s.typed_topic_types();
            for item in s.item_names() {
                if let Some(what) = prost_items.get(&item) {
                    problems.push(Problem {
                        file: s.file.clone(),
                        service: s.proto_name.clone(),
                        method: None,
                        message: format!(
                            "the generated `{item}` would collide with the Rust item of \
                             {what} in package \"{package}\"; rename the service or the {what}"
                        ),
                    });
                }
                // The same typed topic type in two services is one shared type.
                let clash = if own_typed.contains(&item) {
                    typed.insert(item.clone(), &s.proto_name);
                    ours.get(&item).copied()
                } else {
                    ours.insert(item.clone(), &s.proto_name)
                        .or_else(|| typed.get(&item).copied())
                };
                if let Some(other) = clash {
                    problems.push(Problem {
                        file: s.file.clone(),
                        service: s.proto_name.clone(),
                        method: None,
                        message: format!(
                            "the generated `{item}` would collide with the one of service \
                             {other} in package \"{package}\"; rename one of the services"
                        ),
                    });
                }
            }
        }
    }
}
