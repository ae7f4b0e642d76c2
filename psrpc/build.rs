//! Generates the envelope types from `proto/psrpc/internal.proto` (and the
//! test bus envelope from `proto/psrpc/testutils.proto`) with prost-build;
//! protox parses the protos, so no `protoc` is needed.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // The crate carries its protos, so a packaged crate builds on its own.
    let root = manifest.join("proto");
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
