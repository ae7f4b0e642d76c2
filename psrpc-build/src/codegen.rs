//! Rust code for one service: the method descriptors and table, the client,
//! the server-implementation trait (every method with an `unimplemented`
//! default), its registration adapters and the server.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::model::{MethodSpec, ServiceSpec, TopicParam};
use crate::naming::ident;
use crate::options::Routing;

/// What to generate and how to name the runtime crate.
#[derive(Clone)]
pub(crate) struct GenOptions {
    /// Path of the runtime crate (`::psrpc`).
    pub(crate) psrpc: syn::Path,
    pub(crate) client: bool,
    pub(crate) server: bool,
}

/// The file, beside the generated code of `package`, holding the encoded
/// file descriptor set of the compiled protos (for discovery).
pub(crate) fn descriptor_set_file(package: &str) -> String {
    let p = if package.is_empty() { "_" } else { package };
    format!("{p}.psrpc-fds.bin")
}

/// A method with what prost-build resolved for it.
struct Method<'a> {
    spec: &'a MethodSpec,
    comments: Vec<String>,
    input: syn::Type,
    output: syn::Type,
}

/// Formats generated items with prettyplease.
pub(crate) fn format(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        // Unreachable unless the generator is broken; keep the raw tokens
        // so the compiler points at the problem.
        Err(_) => tokens.to_string(),
    }
}

/// The doc lines of proto comments, sanitised as prost-build does.
fn comment_lines(comments: &prost_build::Comments) -> Vec<String> {
    let leading_only = prost_build::Comments {
        leading_detached: Vec::new(),
        leading: comments.leading.clone(),
        trailing: comments.trailing.clone(),
    };
    let mut buf = String::new();
    leading_only.append_with_indent(0, &mut buf);
    buf.lines()
        .filter_map(|l| l.strip_prefix("///"))
        .map(str::to_owned)
        .collect()
}

/// `#[doc]` attributes: the proto comment (if any), a blank line, then ours.
fn docs(proto: &[String], ours: &[String]) -> TokenStream {
    let mut lines: Vec<String> = proto.to_vec();
    if !lines.is_empty() && !ours.is_empty() {
        lines.push(String::new());
    }
    lines.extend(ours.iter().map(|l| {
        if l.is_empty() {
            String::new()
        } else {
            format!(" {l}")
        }
    }));
    quote! { #( #[doc = #lines] )* }
}

fn doc(line: String) -> Vec<String> {
    vec![line]
}

fn routing_text(m: &MethodSpec) -> &'static str {
    let o = &m.opts;
    if o.subscription {
        return if o.routing == Routing::Multi {
            "every subscriber receives every update"
        } else {
            "one subscriber receives each update (queue)"
        };
    }
    match (o.stream, o.routing, o.single_server) {
        (true, Routing::Multi, _) => "every server accepts the stream",
        (true, Routing::Affinity, _) => "the server with the best affinity accepts the stream",
        (true, Routing::Queue, _) => "one server accepts the stream",
        (false, Routing::Multi, _) => "every server answers",
        (false, Routing::Affinity, false) => "one server answers, chosen by affinity",
        (false, Routing::Affinity, true) => {
            "the registered server answers directly (single server: no claim handshake, so \
             the affinity function is not consulted)"
        }
        (false, Routing::Queue, false) => "one server answers (bus queue)",
        (false, Routing::Queue, true) => "one server answers (bus queue, no claim handshake)",
    }
}

fn kind_text(m: &MethodSpec) -> String {
    let kind = if m.opts.subscription {
        "Subscription"
    } else if m.opts.stream {
        "Bidirectional stream"
    } else if m.opts.routing == Routing::Multi {
        "Multi RPC"
    } else {
        "Unary RPC"
    };
    let topics = if m.opts.topics { ", by topic" } else { "" };
    format!("{kind} `{}`{topics}: {}.", m.wire_name, routing_text(m))
}

/// A message type as named from the service's `<service>_methods` module, a
/// child of the module the type paths are relative to: relative paths get a
/// `super::`, absolute ones (`::prost_types::Empty`, `crate::..`) stay.
fn from_child(ty: &syn::Type) -> TokenStream {
    match ty {
        syn::Type::Path(p)
            if p.qself.is_none()
                && p.path.leading_colon.is_none()
                && p.path.segments.first().is_some_and(|s| s.ident != "crate") =>
        {
            quote! { super::#ty }
        }
        _ => quote! { #ty },
    }
}

/// The function parameters and wire-topic expressions of a method's topics.
struct Topics {
    params: Vec<TokenStream>,
    /// The topic, an expression of a type that is `Into<psrpc::Topic>`:
    /// `()` without parameters, else a `[String; N]`.
    topic: TokenStream,
}

fn topics(topics: &[TopicParam]) -> Topics {
    let mut params = Vec::new();
    let mut values = Vec::new();
    for t in topics {
        let name = ident(&t.rust_name);
        match &t.typed {
            Some(ty) => {
                let ty = format_ident!("{}", ty);
                params.push(quote! { #name: impl ::core::convert::Into<#ty> });
                values.push(quote! { ::core::convert::Into::<#ty>::into(#name).0 });
            }
            None => {
                params.push(quote! {
                    #name: impl ::core::convert::Into<::std::string::String>
                });
                values.push(quote! { ::core::convert::Into::into(#name) });
            }
        }
    }
    let topic = if values.is_empty() {
        quote! { () }
    } else {
        quote! { [#(#values),*] }
    };
    Topics { params, topic }
}

/// The generated code of one service.
pub(crate) fn service(svc: &prost_build::Service, spec: &ServiceSpec, o: &GenOptions) -> String {
    let methods: Vec<Method<'_>> = spec
        .methods
        .iter()
        .map(|m| {
            let pm = svc.methods.iter().find(|pm| pm.proto_name == m.proto_name);
            let ty = |s: Option<&String>| {
                s.and_then(|s| syn::parse_str::<syn::Type>(s).ok())
                    .unwrap_or_else(|| syn::parse_quote!(()))
            };
            let mut comments = pm.map(|pm| comment_lines(&pm.comments)).unwrap_or_default();
            if let Some(r) = &m.renamed {
                if !comments.is_empty() {
                    comments.push(String::new());
                }
                comments.push(format!(" {r}"));
            }
            Method {
                spec: m,
                comments,
                input: ty(pm.map(|pm| &pm.input_type)),
                output: ty(pm.map(|pm| &pm.output_type)),
            }
        })
        .collect();
    let service_comments = comment_lines(&svc.comments);

    let mut out = TokenStream::new();
    out.extend(methods_module(spec, &methods, o));
    if o.client {
        out.extend(client(spec, &service_comments, &methods, o));
    }
    if o.server {
        out.extend(server_impl(spec, &service_comments, &methods, o));
        out.extend(service_impl(spec, &methods, o));
        out.extend(server(spec, &service_comments, &methods, o));
    }
    format(out)
}

fn methods_module(spec: &ServiceSpec, methods: &[Method<'_>], o: &GenOptions) -> TokenStream {
    let psrpc = &o.psrpc;
    let fds = descriptor_set_file(&spec.package);
    let module = ident(&spec.methods_module());
    let wire = &spec.wire_name;
    let module_doc = docs(
        &[],
        &[
            format!(
                "Wire names and routing of the psrpc service `{}` (proto `{}`).",
                spec.wire_name, spec.proto_name
            ),
            String::new(),
            "The generated client and server use these; they are public for the generic \
             `RpcClient` and `RpcServer` API, and `METHODS` lists the \
             service for tools."
                .to_owned(),
        ],
    );
    let statics = methods.iter().map(|m| {
        let name = format_ident!("{}", m.spec.static_name());
        let wire = &m.spec.wire_name;
        let o_ = &m.spec.opts;
        let ctor = format_ident!(
            "{}",
            match o_.routing {
                Routing::Queue => "queue",
                Routing::Affinity => "affinity",
                Routing::Multi => "multi",
            }
        );
        let single =
            (o_.single_server && o_.routing != Routing::Multi).then(|| quote! { .single_server() });
        let (input, output) = (from_child(&m.input), from_child(&m.output));
        let doc = docs(&[], &doc(kind_text(m.spec)));
        quote! {
            #doc
            pub static #name: #psrpc::Method<#input, #output> = #psrpc::Method::#ctor(#wire)#single;
        }
    });
    let entries = methods.iter().map(|m| {
        let name = format_ident!("{}", m.spec.static_name());
        let kind = format_ident!("{}", method_kind(m.spec));
        let params = m.spec.topics.iter().map(|t| &t.proto_name);
        quote! {
            #psrpc::service::MethodDesc::new(&#name, #psrpc::service::MethodKind::#kind, &[#(#params),*])
        }
    });
    quote! {
        #module_doc
        pub mod #module {
            /// The service name on the wire.
            pub const SERVICE: &str = #wire;
            /// The encoded `FileDescriptorSet` of the service's proto files
            /// (servers hand it to discovery).
            pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(#fds);
            /// Every method of the service, in proto order: its wire name and
            /// routing, its kind and its topic parameters (the order of the
            /// topic segments).
            pub static METHODS: &[#psrpc::service::MethodDesc] = &[#(#entries),*];
            #(#statics)*
        }
    }
}

/// The `psrpc::service::MethodKind` variant of a method.
fn method_kind(m: &MethodSpec) -> &'static str {
    if m.opts.subscription {
        "Subscription"
    } else if m.opts.stream {
        "Stream"
    } else if m.opts.routing == Routing::Multi {
        "Multi"
    } else {
        "Unary"
    }
}

fn client(
    spec: &ServiceSpec,
    service_comments: &[String],
    methods: &[Method<'_>],
    o: &GenOptions,
) -> TokenStream {
    let psrpc = &o.psrpc;
    let client = format_ident!("{}", spec.client_type());
    let module = ident(&spec.methods_module());
    let type_doc = docs(
        service_comments,
        &[
            format!(
                "Client of the psrpc service `{}`: one function per method.",
                spec.wire_name
            ),
            String::new(),
            "Calls return a builder: set per-call options on it (`timeout`, `context`, \
             `selection`, `metadata`) and `.await` it. Clones share one connection."
                .to_owned(),
        ],
    );
    let fns = methods.iter().map(|m| {
        let name = ident(&m.spec.client_fn());
        let stat = format_ident!("{}", m.spec.static_name());
        let (input, output) = (&m.input, &m.output);
        let Topics { params, topic, .. } = topics(&m.spec.topics);
        let o_ = &m.spec.opts;
        let too_many = (params.len() > 5).then(|| quote! { #[allow(clippy::too_many_arguments)] });
        if o_.subscription {
            let doc = docs(
                &m.comments,
                &[
                    kind_text(m.spec),
                    String::new(),
                    "Joins the subscription; updates arrive on the returned stream until \
                     it is closed or dropped."
                        .to_owned(),
                ],
            );
            quote! {
                #doc
                #too_many
                pub async fn #name(&self, #(#params),*)
                    -> #psrpc::Result<#psrpc::Subscription<#output>>
                {
                    self.client.subscribe(&#module::#stat, #topic).await
                }
            }
        } else if o_.stream {
            let doc = docs(
                &m.comments,
                &[
                    kind_text(m.spec),
                    String::new(),
                    "`.await` the returned builder to open the stream.".to_owned(),
                ],
            );
            quote! {
                #doc
                #too_many
                pub fn #name(&self, #(#params),*) -> #psrpc::StreamCall<'_, #input, #output> {
                    self.client.stream(&#module::#stat, #topic)
                }
            }
        } else if o_.routing == Routing::Multi {
            let doc = docs(
                &m.comments,
                &[
                    kind_text(m.spec),
                    String::new(),
                    "`.await` the returned builder to send the request; the result is a \
                     stream with one item per responding server, which ends at the call's \
                     timeout."
                        .to_owned(),
                ],
            );
            quote! {
                #doc
                #too_many
                pub fn #name(&self, #(#params,)* req: #input)
                    -> #psrpc::MultiCall<'_, #input, #output>
                {
                    self.client.multi(&#module::#stat, #topic, req)
                }
            }
        } else {
            let doc = docs(
                &m.comments,
                &[
                    kind_text(m.spec),
                    String::new(),
                    "`.await` the returned builder to send the request and wait for the \
                     response."
                        .to_owned(),
                ],
            );
            quote! {
                #doc
                #too_many
                pub fn #name(&self, #(#params,)* req: #input)
                    -> #psrpc::UnaryCall<'_, #input, #output>
                {
                    self.client.unary(&#module::#stat, #topic, req)
                }
            }
        }
    });
    quote! {
        #type_doc
        #[derive(Debug, Clone)]
        #[must_use = "a client closes when its last handle is dropped"]
        pub struct #client {
            client: #psrpc::RpcClient,
        }

        impl #client {
            /// Connects a client to `bus` with default options; returns once
            /// it can receive responses.
            pub async fn new(bus: impl #psrpc::MessageBus) -> #psrpc::Result<Self> {
                Self::with_options(bus, ::core::default::Default::default()).await
            }

            /// Connects a client to `bus` with `options`.
            pub async fn with_options(
                bus: impl #psrpc::MessageBus,
                options: #psrpc::ClientOptions,
            ) -> #psrpc::Result<Self> {
                let client = #psrpc::RpcClient::new(bus, #module::SERVICE, options).await?;
                ::core::result::Result::Ok(Self { client })
            }

            /// The generic client this one wraps.
            pub fn rpc_client(&self) -> &#psrpc::RpcClient {
                &self.client
            }

            /// Closes the client: pending and later calls fail with `canceled`.
            pub fn close(&self) {
                self.client.close();
            }

            #(#fns)*
        }
    }
}

fn server_impl(
    spec: &ServiceSpec,
    service_comments: &[String],
    methods: &[Method<'_>],
    o: &GenOptions,
) -> TokenStream {
    let psrpc = &o.psrpc;
    let tr = format_ident!("{}", spec.server_impl_trait());
    let server = spec.server_type();
    let type_doc = docs(
        service_comments,
        &[
            format!(
                "What a server of the psrpc service `{}` implements (serve it with \
                 [`{server}`]).",
                spec.wire_name
            ),
            String::new(),
            "Every method has a default that answers `unimplemented` \"method is not \
             implemented\" (and every affinity function one that never claims): implement \
             only the methods you serve, with `#[psrpc::async_trait]` on the `impl` block."
                .to_owned(),
        ],
    );
    let fns = methods
        .iter()
        .filter(|m| !m.spec.opts.subscription)
        .map(|m| {
            let name = ident(&m.spec.base);
            let (input, output) = (&m.input, &m.output);
            let affinity = m.spec.affinity_fn().map(|a| {
                let a = ident(&a);
                let doc = docs(
                    &[],
                    &[
                        format!(
                            "This server's affinity for `{}` {}: higher is better; \
                             a negative score means \"do not claim\" (the server stays \
                             silent) and 0 is a claim the default selector never picks.",
                            m.spec.wire_name,
                            if m.spec.opts.stream {
                                "streams, given the open (its metadata and topic)"
                            } else {
                                "requests"
                            }
                        ),
                        String::new(),
                        format!(
                            "Default: -1, never claims; implement it together with `{}`.",
                            ident(&m.spec.base)
                        ),
                    ],
                );
                if m.spec.opts.stream {
                    quote! {
                        #doc
                        fn #a(&self, open: &#psrpc::StreamOpen<'_>) -> f32 {
                            let _ = open;
                            -1.0
                        }
                    }
                } else {
                    quote! {
                        #doc
                        fn #a(&self, req: &#input) -> f32 {
                            let _ = req;
                            -1.0
                        }
                    }
                }
            });
            if m.spec.opts.stream {
                let doc = docs(
                    &m.comments,
                    &[
                        kind_text(m.spec),
                        String::new(),
                        "Serves one stream; it closes when this returns (with the error, if \
                         any), unless it was hijacked. Default: closes it with \
                         `unimplemented`."
                            .to_owned(),
                    ],
                );
                quote! {
                    #doc
                    async fn #name(&self, stream: #psrpc::ServerStream<#output, #input>)
                        -> #psrpc::Result<()>
                    {
                        let _ = stream;
                        ::core::result::Result::Err(#psrpc::Error::method_not_implemented())
                    }
                    #affinity
                }
            } else {
                let doc = docs(
                    &m.comments,
                    &[
                        kind_text(m.spec),
                        String::new(),
                        "Default: answers `unimplemented`.".to_owned(),
                    ],
                );
                quote! {
                    #doc
                    async fn #name(&self, ctx: #psrpc::Context, req: #input)
                        -> #psrpc::Result<#output>
                    {
                        let _ = (ctx, req);
                        ::core::result::Result::Err(#psrpc::Error::method_not_implemented())
                    }
                    #affinity
                }
            }
        });
    quote! {
        #type_doc
        #[#psrpc::async_trait]
        pub trait #tr: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#fns)*
        }
    }
}

/// The registration adapters: `psrpc::service::Service` for `dyn <Svc>ServerImpl`,
/// one match arm per method with a handler.
fn service_impl(spec: &ServiceSpec, methods: &[Method<'_>], o: &GenOptions) -> TokenStream {
    let psrpc = &o.psrpc;
    let tr = format_ident!("{}", spec.server_impl_trait());
    let module = ident(&spec.methods_module());
    let arms: Vec<TokenStream> = methods
        .iter()
        .filter(|m| !m.spec.opts.subscription)
        .map(|m| {
            let wire = &m.spec.wire_name;
            let name = ident(&m.spec.base);
            let affinity = match m.spec.affinity_fn() {
                Some(a) => {
                    let a = ident(&a);
                    quote! { ::core::option::Option::Some(<dyn #tr as #tr>::#a) }
                }
                None => quote! { ::core::option::Option::None },
            };
            if m.spec.opts.stream {
                quote! { #wire => r.stream(|s, stream| #tr::#name(s, stream), #affinity), }
            } else {
                quote! { #wire => r.rpc(|s, ctx, req| #tr::#name(s, ctx, req), #affinity), }
            }
        })
        .collect();
    let body = if arms.is_empty() {
        quote! { r.unknown() }
    } else {
        quote! {
            match r.method().name() {
                #(#arms)*
                _ => r.unknown(),
            }
        }
    };
    quote! {
        impl #psrpc::service::Service for dyn #tr {
            const NAME: &'static str = #module::SERVICE;
            const METHODS: &'static [#psrpc::service::MethodDesc] = #module::METHODS;
            const FILE_DESCRIPTOR_SET: &'static [u8] = #module::FILE_DESCRIPTOR_SET;

            fn register(
                r: #psrpc::service::Registration<'_, Self>,
            ) -> #psrpc::service::BoxFuture<'_, #psrpc::Result<()>> {
                #body
            }
        }
    }
}

fn server(
    spec: &ServiceSpec,
    service_comments: &[String],
    methods: &[Method<'_>],
    o: &GenOptions,
) -> TokenStream {
    let psrpc = &o.psrpc;
    let tr = format_ident!("{}", spec.server_impl_trait());
    let ty = format_ident!("{}", spec.server_type());
    let module = ident(&spec.methods_module());

    let per_method = methods.iter().map(|m| {
        let Topics { params, topic } = topics(&m.spec.topics);
        let stat = format_ident!("{}", m.spec.static_name());
        let too_many = (params.len() > 5).then(|| quote! { #[allow(clippy::too_many_arguments)] });
        if m.spec.opts.subscription {
            let name = ident(&m.spec.publish_fn());
            let output = &m.output;
            let doc = docs(
                &m.comments,
                &[
                    kind_text(m.spec),
                    String::new(),
                    "Publishes `msg` to the subscribers.".to_owned(),
                ],
            );
            quote! {
                #doc
                #too_many
                pub async fn #name(&self, #(#params,)* msg: &#output) -> #psrpc::Result<()> {
                    self.server.publish(&#module::#stat, #topic, msg).await
                }
            }
        } else if m.spec.opts.topics {
            let reg_name = ident(&m.spec.register_fn());
            let dereg_name = ident(&m.spec.deregister_fn());
            let reg_doc = docs(
                &m.comments,
                &[
                    kind_text(m.spec),
                    String::new(),
                    "Serves the method on this topic; returns once requests on it reach \
                     this server. Fails with `already_exists` when it is served already."
                        .to_owned(),
                ],
            );
            let dereg_doc = docs(
                &[],
                &[format!(
                    "Stops serving `{}` on this topic, without waiting for the requests \
                     in flight.",
                    m.spec.wire_name
                )],
            );
            quote! {
                #reg_doc
                #too_many
                pub async fn #reg_name(&self, #(#params),*) -> #psrpc::Result<()> {
                    self.server.register(&#module::#stat, #topic).await
                }

                #dereg_doc
                #too_many
                pub fn #dereg_name(&self, #(#params),*) {
                    self.server.deregister(&#module::#stat, #topic);
                }
            }
        } else {
            quote! {}
        }
    });

    let groups = spec.groups.iter().map(|g| {
        let Topics { params, topic } = topics(&g.topics);
        let reg_all = ident(&g.register_all_fn());
        let dereg_all = ident(&g.deregister_all_fn());
        let members: Vec<&MethodSpec> = g.members.iter().map(|&i| &spec.methods[i]).collect();
        let stats: Vec<_> = members
            .iter()
            .map(|m| {
                let stat = format_ident!("{}", m.static_name());
                quote! { #module::#stat.name() }
            })
            .collect();
        let list = members
            .iter()
            .map(|m| format!("`{}`", m.wire_name))
            .collect::<Vec<_>>()
            .join(", ");
        let reg_doc = docs(
            &[],
            &[
                format!(
                    "Serves every method of the topic group `{}` ({list}) on these topics.",
                    g.proto_name
                ),
                String::new(),
                "All or nothing: when one registration fails, those already made are \
                 undone and its error is returned."
                    .to_owned(),
            ],
        );
        let dereg_doc = docs(
            &[],
            &[format!(
                "Stops serving every method of the topic group `{}` ({list}) on these topics.",
                g.proto_name
            )],
        );
        let too_many = (params.len() > 5).then(|| quote! { #[allow(clippy::too_many_arguments)] });
        quote! {
            #reg_doc
            #too_many
            pub async fn #reg_all(&self, #(#params),*) -> #psrpc::Result<()> {
                self.server.register_all(&[#(#stats),*], #topic).await
            }

            #dereg_doc
            #too_many
            pub fn #dereg_all(&self, #(#params),*) {
                self.server.deregister_all(&[#(#stats),*], #topic);
            }
        }
    });

    let type_doc = docs(
        service_comments,
        &[
            format!(
                "Server of the psrpc service `{}`: serves a [`{tr}`] on a bus.",
                spec.wire_name
            ),
            String::new(),
            "Methods without topics are served from construction on; methods with topics \
             from their `register_*_topic` call. Clones share the server; dropping the last \
             one stops it at once (call `shutdown` first to drain)."
                .to_owned(),
        ],
    );
    quote! {
        #type_doc
        #[derive(Debug, Clone)]
        pub struct #ty {
            server: #psrpc::service::ServiceServer<dyn #tr>,
        }

        impl #ty {
            /// Serves `svc` on `bus` with default options; returns once the
            /// methods without topics are being served.
            pub async fn new(svc: impl #tr, bus: impl #psrpc::MessageBus) -> #psrpc::Result<Self> {
                Self::with_options(svc, bus, ::core::default::Default::default()).await
            }

            /// Serves `svc` on `bus` with `options`.
            pub async fn with_options(
                svc: impl #tr,
                bus: impl #psrpc::MessageBus,
                options: #psrpc::ServerOptions,
            ) -> #psrpc::Result<Self> {
                Self::from_arc(::std::sync::Arc::new(svc), bus, options).await
            }

            /// Serves a shared `svc` on `bus` with `options` (keep a clone of
            /// the `Arc` to reach the implementation's state).
            pub async fn from_arc(
                svc: ::std::sync::Arc<dyn #tr>,
                bus: impl #psrpc::MessageBus,
                options: #psrpc::ServerOptions,
            ) -> #psrpc::Result<Self> {
                let server = #psrpc::service::ServiceServer::start(svc, bus, options).await?;
                ::core::result::Result::Ok(Self { server })
            }

            /// The generic server this one wraps.
            pub fn rpc_server(&self) -> &#psrpc::RpcServer {
                self.server.rpc_server()
            }

            /// Stops taking requests, waits for those in flight, then leaves the bus.
            pub async fn shutdown(&self) {
                self.server.shutdown().await;
            }

            /// Leaves the bus at once, without waiting for requests in flight.
            pub fn kill(&self) {
                self.server.kill();
            }

            #(#per_method)*

            #(#groups)*
        }
    }
}

/// The newtypes of typed topic parameters (`topic_params.typed`), once per package.
pub(crate) fn topic_types(types: &[(String, String)]) -> String {
    let items = types.iter().map(|(ty, proto)| {
        let ty = format_ident!("{}", ty);
        let doc = docs(
            &[],
            &[
                format!("The typed topic parameter `{proto}` (`topic_params.typed`)."),
                String::new(),
                "A distinct type, so topics of different parameters cannot be swapped; \
                 implement `From<YourType>` for it to pass your own type."
                    .to_owned(),
            ],
        );
        quote! {
            #doc
            #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
            pub struct #ty(pub ::std::string::String);

            impl #ty {
                /// A topic value.
                pub fn new(topic: impl ::core::convert::Into<::std::string::String>) -> Self {
                    Self(::core::convert::Into::into(topic))
                }

                /// The topic as a string.
                pub fn as_str(&self) -> &str {
                    &self.0
                }
            }

            impl ::core::convert::AsRef<str> for #ty {
                fn as_ref(&self) -> &str {
                    &self.0
                }
            }

            impl ::core::fmt::Display for #ty {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.write_str(&self.0)
                }
            }

            impl ::core::convert::From<#ty> for ::std::string::String {
                fn from(topic: #ty) -> Self {
                    topic.0
                }
            }
        }
    });
    format(quote! { #(#items)* })
}
