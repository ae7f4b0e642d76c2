//! Generates the test services: the Go test protos (with their `import
//! "options.proto"` unchanged) into one module tree, and the fully commented
//! protos (every kind; name collisions) into their own files, so their
//! generated code is checked against `missing_docs` too.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let protos = Path::new("proto");
    let fixtures = Path::new("../psrpc-build/tests/fixtures");

    psrpc_build::configure()
        .configure_prost(|c| {
            c.include_file("protos.rs");
        })
        .compile_protos(
            &[
                "my_service.proto",
                "echo.proto",
                "snake_case_names.proto",
                "no_package_name_importer.proto",
                "importer.proto",
                "google_protobuf_imports.proto",
                "multiple1.proto",
                "multiple2.proto",
                "empty_service.proto",
                "greeter.proto",
            ]
            .map(|p| protos.join(p)),
            &[protos],
        )?;

    psrpc_build::configure().compile_protos(
        &[
            fixtures.join("kinds.proto"),
            protos.join("collisions.proto"),
        ],
        &[fixtures, protos],
    )
}
