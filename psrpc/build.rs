//! Generates the envelope types from `proto/psrpc/internal.proto` (and the
//! test bus envelope from `proto/psrpc/testutils.proto`) with prost-build;
//! protox parses the protos, so no `protoc` is needed.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // The protos live at the workspace root; a packaged crate carries its own copy.
    let root = [manifest.join("../proto"), manifest.join("proto")]
        .into_iter()
        .find(|p| p.join("psrpc/internal.proto").exists())
        .expect("proto/psrpc/internal.proto not found");
    let files = [
        root.join("psrpc/internal.proto"),
        root.join("psrpc/testutils.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root]).expect("parse the protos");
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(fds)
        .expect("generate the protos");
}
