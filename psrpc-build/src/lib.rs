#![doc = include_str!("../README.md")]

mod codegen;
mod model;
mod naming;
mod options;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

use crate::codegen::GenOptions;
use crate::model::{ServiceSpec, is_psrpc_options_file};

/// Compiles `protos` (found under `includes`) into `OUT_DIR/<proto package>.rs`:
/// the prost messages and, for each service, the psrpc client, server trait
/// and server. Call it from `build.rs`; see the [crate docs](crate) for the
/// whole walk from a `.proto` to a running service.
///
/// `options.proto` (the psrpc method options) is built in: import it as
/// `psrpc/options.proto` or, as protos written for Go psrpc do, as
/// `options.proto`. No `protoc` is needed.
///
/// Fails with a message naming the file, service and method when a method's
/// psrpc options cannot be generated, and what to change.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> io::Result<()> {
    configure().compile_protos(protos, includes)
}

/// A [`Builder`] with the defaults of [`compile_protos`].
pub fn configure() -> Builder {
    Builder::new()
}

/// Code generation settings: output directory, extra prost-build
/// configuration, which parts to generate.
#[derive(Debug)]
pub struct Builder {
    config: prost_build::Config,
    out_dir: Option<PathBuf>,
    psrpc_path: String,
    build_client: bool,
    build_server: bool,
    emit_rerun_if_changed: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The defaults: output to `OUT_DIR`, client and server, runtime crate `::psrpc`.
    pub fn new() -> Self {
        Builder {
            config: prost_build::Config::new(),
            out_dir: None,
            psrpc_path: "::psrpc".into(),
            build_client: true,
            build_server: true,
            emit_rerun_if_changed: std::env::var_os("OUT_DIR").is_some(),
        }
    }

    /// Writes the generated files to `dir` instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Starts from this prost-build configuration (for `bytes`, `btree_map`,
    /// `extern_path`, `include_file`, ...). Set it before the other knobs
    /// that forward to prost-build ([`type_attribute`](Self::type_attribute)
    /// and friends), which it replaces. Type names are always enabled (psrpc
    /// needs `prost::Name` for subscriptions and error details), and the
    /// service generator is always psrpc's.
    pub fn prost_config(mut self, config: prost_build::Config) -> Self {
        self.config = config;
        self
    }

    /// Changes the prost-build configuration in place.
    pub fn configure_prost(mut self, f: impl FnOnce(&mut prost_build::Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Adds an attribute to the messages and enums matched by `path` (see
    /// [`prost_build::Config::type_attribute`]).
    pub fn type_attribute(mut self, path: impl AsRef<str>, attribute: impl AsRef<str>) -> Self {
        self.config.type_attribute(path, attribute);
        self
    }

    /// Adds an attribute to the messages matched by `path` (see
    /// [`prost_build::Config::message_attribute`]).
    pub fn message_attribute(mut self, path: impl AsRef<str>, attribute: impl AsRef<str>) -> Self {
        self.config.message_attribute(path, attribute);
        self
    }

    /// Adds an attribute to the enums matched by `path` (see
    /// [`prost_build::Config::enum_attribute`]).
    pub fn enum_attribute(mut self, path: impl AsRef<str>, attribute: impl AsRef<str>) -> Self {
        self.config.enum_attribute(path, attribute);
        self
    }

    /// Adds an attribute to the fields matched by `path` (see
    /// [`prost_build::Config::field_attribute`]).
    pub fn field_attribute(mut self, path: impl AsRef<str>, attribute: impl AsRef<str>) -> Self {
        self.config.field_attribute(path, attribute);
        self
    }

    /// Uses the Rust type at `rust_path` for the proto path `proto_path`
    /// instead of generating it (see [`prost_build::Config::extern_path`]).
    pub fn extern_path(
        mut self,
        proto_path: impl Into<String>,
        rust_path: impl Into<String>,
    ) -> Self {
        self.config.extern_path(proto_path, rust_path);
        self
    }

    /// Whether to generate the clients (default true).
    pub fn build_client(mut self, yes: bool) -> Self {
        self.build_client = yes;
        self
    }

    /// Whether to generate the server traits and servers (default true).
    pub fn build_server(mut self, yes: bool) -> Self {
        self.build_server = yes;
        self
    }

    /// The path of the psrpc runtime crate in the generated code (default
    /// `::psrpc`), for crates that rename or re-export it.
    pub fn psrpc_path(mut self, path: impl Into<String>) -> Self {
        self.psrpc_path = path.into();
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every compiled proto
    /// file (default: when run as a build script, i.e. when `OUT_DIR` is set).
    pub fn emit_rerun_if_changed(mut self, yes: bool) -> Self {
        self.emit_rerun_if_changed = yes;
        self
    }

    /// Compiles `protos` (found under `includes`); see [`compile_protos`].
    pub fn compile_protos(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> io::Result<()> {
        let mut resolver = ChainFileResolver::new();
        for include in includes {
            resolver.add(IncludeFileResolver::new(include.as_ref().to_owned()));
        }
        resolver.add(BundledOptions);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true).include_source_info(true);
        compiler
            .open_files(protos)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let pool = compiler.descriptor_pool();

        let specs = model::read_services(&pool).map_err(|problems| {
            let mut msg = String::from("psrpc-build: cannot generate these services:");
            for p in problems {
                let _ = write!(msg, "\n  {p}");
            }
            io::Error::new(io::ErrorKind::InvalidInput, msg)
        })?;
        for s in specs.values() {
            for w in &s.warnings {
                println!("cargo:warning={w}");
            }
        }

        let requested: Vec<String> = compiler
            .files()
            .filter(|f| !f.is_import())
            .map(|f| f.name().to_owned())
            .collect();
        let mut fds = compiler.file_descriptor_set();
        // Embedded for discovery: every file with its imports (psrpc's
        // options too, so readers get the routing), encoded by protox,
        // which keeps the options' extensions that prost-types drops.
        let file_descriptor_set = compiler.encode_file_descriptor_set();
        let keep = files_to_generate(&fds, &requested);
        fds.file.retain(|f| keep.contains(f.name()));

        if self.emit_rerun_if_changed {
            for f in compiler.files() {
                if let Some(path) = f.path() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }

        let psrpc = syn::parse_str::<syn::Path>(&self.psrpc_path).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "psrpc-build: psrpc_path {:?} is not a path: {e}",
                    self.psrpc_path
                ),
            )
        })?;
        let generator = Generator {
            specs,
            options: GenOptions {
                psrpc,
                client: self.build_client,
                server: self.build_server,
            },
            typed_topics: BTreeMap::new(),
        };
        // The descriptor set goes beside each package's generated code,
        // which includes it with `include_bytes!`.
        let out_dir = match &self.out_dir {
            Some(d) => Some(d.clone()),
            None => std::env::var_os("OUT_DIR").map(PathBuf::from),
        };
        if let Some(out) = &out_dir {
            let packages: BTreeSet<&str> =
                generator.specs.keys().map(|(p, _)| p.as_str()).collect();
            for p in packages {
                std::fs::write(
                    out.join(codegen::descriptor_set_file(p)),
                    &file_descriptor_set,
                )?;
            }
        }
        let mut config = self.config;
        config.enable_type_names();
        if let Some(dir) = self.out_dir {
            config.out_dir(dir);
        }
        config.service_generator(Box::new(generator));
        config.compile_fds(fds)
    }
}

/// Serves the built-in `psrpc/options.proto`, and `options.proto` (the name
/// Go protos import) as a file that publicly imports it, so that protos
/// importing either name can be compiled together: the definitions exist once.
struct BundledOptions;

/// `options.proto`: the Go import name, re-exporting `psrpc/options.proto`.
const OPTIONS_ALIAS: &str = "syntax = \"proto3\";\nimport public \"psrpc/options.proto\";\n";

impl FileResolver for BundledOptions {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match name {
            "psrpc/options.proto" => File::from_source(name, options::OPTIONS_PROTO),
            "options.proto" => File::from_source(name, OPTIONS_ALIAS),
            _ => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The requested files and everything they import, except the psrpc
/// options file and what only it imports (`google/protobuf/descriptor.proto`):
/// prost-build generates every file it is given.
fn files_to_generate(
    fds: &prost_types::FileDescriptorSet,
    requested: &[String],
) -> HashSet<String> {
    let by_name: HashMap<&str, &prost_types::FileDescriptorProto> =
        fds.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep = HashSet::new();
    let mut todo: Vec<&str> = requested.iter().map(String::as_str).collect();
    while let Some(name) = todo.pop() {
        let Some(f) = by_name.get(name) else { continue };
        let own_items =
            !f.message_type.is_empty() || !f.enum_type.is_empty() || !f.service.is_empty();
        if is_psrpc_options_file(f.name(), f.package(), own_items) || !keep.insert(name.to_owned())
        {
            continue;
        }
        todo.extend(f.dependency.iter().map(String::as_str));
    }
    keep
}

/// The prost-build service generator: appends each service's psrpc code to
/// its package's file.
struct Generator {
    specs: BTreeMap<(String, String), ServiceSpec>,
    options: GenOptions,
    /// Typed topic newtypes per package, emitted once at the package's end.
    typed_topics: BTreeMap<String, Vec<(String, String)>>,
}

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let key = (service.package.clone(), service.proto_name.clone());
        let Some(spec) = self.specs.get(&key) else {
            return;
        };
        buf.push('\n');
        buf.push_str(&codegen::service(&service, spec, &self.options));
        let types = self
            .typed_topics
            .entry(service.package.clone())
            .or_default();
        for t in spec.typed_topics() {
            if !types.iter().any(|(name, _)| *name == t.0) {
                types.push(t);
            }
        }
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        if let Some(types) = self.typed_topics.remove(package) {
            if !types.is_empty() {
                buf.push('\n');
                buf.push_str(&codegen::topic_types(&types));
            }
        }
    }
}
