//! Runs the generator on protos in a temporary directory: the expected-output
//! fixture, the options, the imports of `options.proto`, and the build errors
//! for what cannot be generated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes `files` (name, content) under a temporary include directory,
/// compiles `protos` with `configure`, and returns the generated files.
fn generate_with(
    files: &[(&str, &str)],
    protos: &[&str],
    configure: impl FnOnce(psrpc_build::Builder) -> psrpc_build::Builder,
) -> std::io::Result<BTreeMap<String, String>> {
    let dir = tempfile::tempdir()?;
    let include = dir.path().join("proto");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out)?;
    for (name, content) in files {
        let path = include.join(name);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(path, content)?;
    }
    let protos: Vec<PathBuf> = protos.iter().map(|p| include.join(p)).collect();
    configure(psrpc_build::configure().out_dir(&out)).compile_protos(&protos, &[&include])?;
    let mut generated = BTreeMap::new();
    for entry in std::fs::read_dir(&out)? {
        let entry = entry?;
        // The descriptor sets for discovery are beside the code.
        if entry.path().extension().is_some_and(|e| e == "bin") {
            continue;
        }
        generated.insert(
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(entry.path())?,
        );
    }
    Ok(generated)
}

/// The code without whitespace (and the trailing commas line breaks add).
fn squash(code: &str) -> String {
    code.replace(char::is_whitespace, "").replace(",)", ")")
}

fn generate(files: &[(&str, &str)]) -> std::io::Result<BTreeMap<String, String>> {
    let protos: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    generate_with(files, &protos, |b| b)
}

/// The error message of a generation that must fail.
fn error_of(files: &[(&str, &str)]) -> String {
    match generate(files) {
        Ok(_) => panic!("generation succeeded, expected an error"),
        Err(e) => e.to_string(),
    }
}

/// A one-service proto with the given method definitions.
fn service(methods: &str) -> String {
    format!(
        r#"syntax = "proto3";
package test.pkg;
import "psrpc/options.proto";
message Req {{}}
message Res {{}}
service Svc {{
{methods}
}}
"#
    )
}

#[test]
fn fixture_kinds_matches_the_generated_code() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    psrpc_build::configure()
        .out_dir(dir.path())
        .emit_rerun_if_changed(false)
        .compile_protos(&[fixtures.join("kinds.proto")], &[&fixtures])
        .unwrap();
    let got = std::fs::read_to_string(dir.path().join("psrpc.codegen.kinds.rs")).unwrap();
    let expected_path = fixtures.join("psrpc.codegen.kinds.rs");
    if std::env::var_os("PSRPC_BUILD_BLESS").is_some() {
        std::fs::write(&expected_path, &got).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if got != expected {
        let line = got
            .lines()
            .zip(expected.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| got.lines().count().min(expected.lines().count()));
        panic!(
            "the generated code differs from tests/fixtures/psrpc.codegen.kinds.rs from line {}:\n\
             got:      {:?}\nexpected: {:?}\n\
             If the change is deliberate, rerun with PSRPC_BUILD_BLESS=1 and review the diff.",
            line + 1,
            got.lines().nth(line),
            expected.lines().nth(line)
        );
    }
}

#[test]
fn messages_and_services_share_the_package_file() {
    let out = generate(&[("a.proto", &service("rpc Call(Req) returns (Res);"))]).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), ["test.pkg.rs"]);
    let code = &out["test.pkg.rs"];
    assert!(code.contains("pub struct Req {}"));
    assert!(code.contains("impl ::prost::Name for Req"));
    assert!(code.contains("pub struct SvcClient"));
    assert!(code.contains("pub trait SvcServerImpl"));
    assert!(code.contains("pub struct SvcServer"));
    assert!(code.contains(r#"pub const SERVICE: &str = "Svc";"#));
    assert!(squash(code).contains(
        r#"pubstaticCALL:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::queue("Call");"#
    ));
    // The psrpc options themselves are not generated.
    assert!(!out.contains_key("psrpc.rs"));
}

#[test]
fn options_proto_is_importable_under_both_names() {
    for import in ["options.proto", "psrpc/options.proto"] {
        let proto = service("rpc Call(Req) returns (Res) { option (psrpc.options).type = MULTI; }")
            .replace("psrpc/options.proto", import);
        let out = generate(&[("a.proto", &proto)]).unwrap();
        assert!(
            squash(&out["test.pkg.rs"]).contains(r#"::psrpc::Method::multi("Call")"#),
            "import {import:?}"
        );
    }
}

#[test]
fn both_option_imports_compile_together() {
    // Go protos import `options.proto`, others `psrpc/options.proto`; one
    // build can hold both (the first re-exports the second).
    let go = service("rpc Call(Req) returns (Res) { option (psrpc.options).type = MULTI; }")
        .replace("psrpc/options.proto", "options.proto")
        .replace("package test.pkg;", "package go.style;");
    let rust = service("rpc Call(Req) returns (Res) { option (psrpc.options).type = AFFINITY; }");
    let out = generate(&[("go.proto", &go), ("rust.proto", &rust)]).unwrap();
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        ["go.style.rs", "test.pkg.rs"]
    );
    assert!(squash(&out["go.style.rs"]).contains(r#"Method::multi("Call")"#));
    assert!(squash(&out["test.pkg.rs"]).contains(r#"Method::affinity("Call")"#));
}

#[test]
fn routing_flags_follow_the_options() {
    let proto = service(
        r#"
  rpc Plain(Req) returns (Res);
  rpc Aff(Req) returns (Res) { option (psrpc.options).type = AFFINITY; }
  rpc All(Req) returns (Res) { option (psrpc.options).type = MULTI; }
  rpc Direct(Req) returns (Res) { option (psrpc.options).topic_params.single_server = true; }
  rpc DirectAff(Req) returns (Res) {
    option (psrpc.options).type = AFFINITY;
    option (psrpc.options).topic_params.single_server = true;
  }
  rpc OldMultiFalse(Req) returns (Res) { option (psrpc.options).multi = false; }
  rpc OldAffinity(Req) returns (Res) {
    option (psrpc.options).type = MULTI;
    option (psrpc.options).affinity_func = true;
  }
  rpc OldQueue(Req) returns (Res) {
    option (psrpc.options).type = AFFINITY;
    option (psrpc.options).queue = false;
  }"#,
    );
    let out = generate(&[("a.proto", &proto)]).unwrap();
    let code = squash(&out["test.pkg.rs"]);
    for expected in [
        r#"PLAIN:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::queue("Plain");"#,
        r#"AFF:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::affinity("Aff");"#,
        r#"ALL:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::multi("All");"#,
        r#"DIRECT:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::queue("Direct").single_server();"#,
        r#"DIRECT_AFF:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::affinity("DirectAff").single_server();"#,
        // As in Go, the presence of the deprecated `multi`, even false, selects MULTI.
        r#"OLD_MULTI_FALSE:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::multi("OldMultiFalse");"#,
        r#"OLD_AFFINITY:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::affinity("OldAffinity");"#,
        r#"OLD_QUEUE:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::queue("OldQueue");"#,
    ] {
        assert!(code.contains(expected), "missing {expected}");
    }
    // Only affinity methods get an affinity function.
    assert!(code.contains("fnaff_affinity(&self,req:&Req)->f32{let_=req;-1.0}"));
    assert!(code.contains("fnold_affinity_affinity(&self,req:&Req)->f32{"));
    assert!(!code.contains("fnplain_affinity"));
}

#[test]
fn wire_names_are_go_camel_case_without_the_package() {
    let proto = r#"syntax = "proto3";
package my.pkg.v1;
message Req {}
service Haberdasher_v1 {
  rpc MakeHat_v1(Req) returns (Req);
  rpc get_stats(Req) returns (Req);
}
"#;
    let out = generate(&[("a.proto", proto)]).unwrap();
    let code = squash(&out["my.pkg.v1.rs"]);
    assert!(code.contains(r#"pubconstSERVICE:&str="HaberdasherV1";"#));
    assert!(code.contains(r#"Method::queue("MakeHatV1")"#));
    assert!(code.contains(r#"Method::queue("GetStats")"#));
    assert!(code.contains("pubstructHaberdasherV1Client"));
    assert!(code.contains("pubfnmake_hat_v1("));
    assert!(code.contains("pubfnget_stats("));
    assert!(code.contains("pubmodhaberdasher_v1_methods"));
}

#[test]
fn proto_comments_become_doc_comments() {
    let proto = r#"syntax = "proto3";
package test.pkg;
message Req {}
// The service comment
// on two lines.
service Svc {
  // The method comment.
  rpc Call(Req) returns (Req); // trailing
}
"#;
    let out = generate(&[("a.proto", proto)]).unwrap();
    let code = &out["test.pkg.rs"];
    assert!(code.contains("/// The service comment\n/// on two lines.\n///\n/// Client of"));
    assert!(code.contains(
        "/// The method comment.\n    ///\n    /// trailing\n    ///\n    /// Unary RPC `Call`"
    ));
}

#[test]
fn grpc_stream_keywords_are_ignored_as_in_go() {
    let proto = r#"syntax = "proto3";
package test.pkg;
message Req {}
service Svc {
  rpc Call(stream Req) returns (stream Req);
}
"#;
    let out = generate(&[("a.proto", proto)]).unwrap();
    assert!(out["test.pkg.rs"].contains("::psrpc::UnaryCall<'_, Req, Req>"));
}

#[test]
fn builder_knobs() {
    let proto = service("rpc Call(Req) returns (Res);");
    let out = generate_with(&[("a.proto", &proto)], &["a.proto"], |b| {
        b.build_client(false)
            .psrpc_path("crate::rt")
            .type_attribute("test.pkg.Req", "#[derive(Default)]")
            .configure_prost(|c| {
                c.include_file("all.rs");
            })
    })
    .unwrap();
    let code = &out["test.pkg.rs"];
    assert!(!code.contains("SvcClient"));
    assert!(code.contains("pub struct SvcServer"));
    assert!(squash(code).contains("crate::rt::Method::queue(\"Call\")"));
    assert!(!code.contains("::psrpc::"));
    assert!(code.contains("#[derive(Default)]"));
    assert!(out.contains_key("all.rs"));

    let out = generate_with(&[("a.proto", &proto)], &["a.proto"], |b| {
        b.build_server(false)
    })
    .unwrap();
    let code = &out["test.pkg.rs"];
    assert!(code.contains("pub struct SvcClient"));
    assert!(!code.contains("SvcServer"));
}

#[test]
fn imports_from_other_files_and_packages() {
    let a = r#"syntax = "proto3";
package lib.a;
message Shared { string v = 1; }
"#;
    let b = r#"syntax = "proto3";
package app.b;
import "lib/a.proto";
import "google/protobuf/empty.proto";
service Svc {
  rpc Call(lib.a.Shared) returns (google.protobuf.Empty);
}
"#;
    let out = generate_with(
        &[("lib/a.proto", a), ("app/b.proto", b)],
        &["app/b.proto"],
        |b| b,
    )
    .unwrap();
    assert!(
        out.contains_key("lib.a.rs"),
        "imported files are generated too: {:?}",
        out.keys()
    );
    let code = &out["app.b.rs"];
    assert!(code.contains("::psrpc::UnaryCall<'_, super::super::lib::a::Shared, ()>"));
}

// --- what cannot be generated fails the build, naming the place and the fix ---

#[test]
fn stream_subscription_is_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service(
            "rpc Both(Req) returns (Res) {
               option (psrpc.options).stream = true;
               option (psrpc.options).subscription = true;
             }",
        ),
    )]);
    assert!(e.contains("bad.proto: service Svc, method Both:"), "{e}");
    assert!(
        e.contains("cannot be both a subscription and a stream"),
        "{e}"
    );
    assert!(
        e.contains("set either `subscription = true` or `stream = true`"),
        "{e}"
    );
}

#[test]
fn affinity_subscription_is_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service(
            "rpc Sub(Req) returns (Res) {
               option (psrpc.options).subscription = true;
               option (psrpc.options).type = AFFINITY;
             }",
        ),
    )]);
    assert!(e.contains("bad.proto: service Svc, method Sub:"), "{e}");
    assert!(e.contains("use `type = QUEUE`"), "{e}");
}

#[test]
fn topic_params_without_topics_are_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service(
            r#"rpc Call(Req) returns (Res) {
               option (psrpc.options).topic_params.names = "region";
             }"#,
        ),
    )]);
    assert!(e.contains("bad.proto: service Svc, method Call:"), "{e}");
    assert!(
        e.contains("add `option (psrpc.options).topics = true;`"),
        "{e}"
    );
}

#[test]
fn group_on_a_subscription_is_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service(
            r#"rpc Sub(Req) returns (Res) {
               option (psrpc.options).subscription = true;
               option (psrpc.options).topics = true;
               option (psrpc.options).topic_params.group = "g";
             }"#,
        ),
    )]);
    assert!(
        e.contains("method Sub: topic group \"g\" on a subscription"),
        "{e}"
    );
    assert!(e.contains("remove `topic_params.group`"), "{e}");
}

#[test]
fn mismatched_topic_group_members_are_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service(
            r#"rpc A(Req) returns (Res) {
               option (psrpc.options).topics = true;
               option (psrpc.options).topic_params = { group: "g" names: ["region"] };
             }
             rpc B(Req) returns (Res) {
               option (psrpc.options).topics = true;
               option (psrpc.options).topic_params = { group: "g" names: ["region", "node"] };
             }"#,
        ),
    )]);
    assert!(e.contains("bad.proto: service Svc, method B:"), "{e}");
    assert!(
        e.contains(
            "all members of topic group \"g\" must have the same parameter names and typed values"
        ),
        "{e}"
    );
}

#[test]
fn bad_topic_parameter_names_are_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service(
            r#"rpc A(Req) returns (Res) {
               option (psrpc.options).topics = true;
               option (psrpc.options).topic_params.names = "room-name";
             }
             rpc B(Req) returns (Res) {
               option (psrpc.options).topics = true;
               option (psrpc.options).topic_params = { names: ["roomId", "room_id"] };
             }"#,
        ),
    )]);
    // Every problem is reported at once.
    assert!(
        e.contains("method A: topic parameter name \"room-name\" is not an identifier"),
        "{e}"
    );
    assert!(e.contains("method B: topic parameters \"roomId\" and \"room_id\" have the same name in Rust (`room_id`)"), "{e}");
}

#[test]
fn same_wire_names_are_rejected() {
    let e = error_of(&[(
        "bad.proto",
        &service("rpc GetStats(Req) returns (Res); rpc getStats(Req) returns (Res);"),
    )]);
    assert!(
        e.contains("bad.proto: service Svc, method getStats:"),
        "{e}"
    );
    assert!(e.contains("same name on the wire (\"GetStats\")"), "{e}");
}

#[test]
fn generated_items_colliding_with_messages_are_rejected() {
    let proto = r#"syntax = "proto3";
package test.pkg;
message SvcClient {}
service Svc { rpc Call(SvcClient) returns (SvcClient); }
"#;
    let e = error_of(&[("bad.proto", proto)]);
    assert!(e.contains("bad.proto: service Svc: the generated `SvcClient` would collide with the Rust item of message SvcClient"), "{e}");

    let proto = r#"syntax = "proto3";
package test.pkg;
message M {}
service foo_bar { rpc Call(M) returns (M); }
service FooBar { rpc Call(M) returns (M); }
"#;
    let e = error_of(&[("bad.proto", proto)]);
    assert!(e.contains("would collide with the one of service"), "{e}");
}

#[test]
fn unknown_imports_fail_with_protox_errors() {
    let e = error_of(&[(
        "bad.proto",
        "syntax = \"proto3\";\nimport \"missing.proto\";\n",
    )]);
    assert!(e.contains("missing.proto"), "{e}");
}

#[test]
fn methods_named_like_the_module_items_are_renamed() {
    // `METHODS`, `SERVICE` and `FILE_DESCRIPTOR_SET` are the module's own.
    let out = generate(&[(
        "a.proto",
        &service(
            "rpc Methods(Req) returns (Res); rpc Service(Req) returns (Res);
             rpc FileDescriptorSet(Req) returns (Res);",
        ),
    )])
    .unwrap();
    let code = squash(&out["test.pkg.rs"]);
    assert!(code.contains(
        r#"pubstaticMETHODS_2:::psrpc::Method<super::Req,super::Res>=::psrpc::Method::queue("Methods");"#
    ));
    assert!(code.contains(r#"pubstaticSERVICE_2:::psrpc::Method<"#));
    assert!(code.contains(r#"pubstaticFILE_DESCRIPTOR_SET_2:::psrpc::Method<"#));
    assert!(code.contains("pubstaticMETHODS:&[::psrpc::service::MethodDesc]=&["));
}
